// Runs tests/vectors/*.json against this client: byte-exact encoding of every canonical frame
// and every reading the typed API can express, decoding of every valid frame and reading, and
// the receiver's verdict (ERROR code, fatal or not) for every invalid frame.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;

namespace SensorTelemetry.Tests
{
    public sealed class VectorChecks
    {
        public int Checked;
        public int Skipped;
        public readonly List<string> Failures = new List<string>();

        public void Run(string dir)
        {
            FramesValid(Load(Path.Combine(dir, "frames_valid.json")));
            FramesInvalid(Load(Path.Combine(dir, "frames_invalid.json")));
            Readings(Load(Path.Combine(dir, "readings.json")));
        }

        private static List<object> Load(string path)
        {
            return (List<object>)((JsonObject)Json.Parse(File.ReadAllText(path, Encoding.UTF8)))["vectors"];
        }

        private void Check(bool ok, string name, string what)
        {
            Checked++;
            if (!ok)
                Failures.Add(name + ": " + what);
        }

        // ---- frames_valid.json

        private void FramesValid(List<object> vectors)
        {
            foreach (JsonObject v in vectors)
            {
                var name = (string)v["name"];
                var hex = (string)v["hex"];
                var bytes = Hex.Decode(hex);
                var message = (JsonObject)v["message"];
                var fields = (JsonObject)message["fields"];
                byte[] body;
                using (var ms = new MemoryStream(bytes))
                {
                    body = Framing.ReadFrameAsync(ms, Wire.DefaultMaxFrameBytes).GetAwaiter().GetResult();
                    Check(body != null && ms.Position == bytes.Length, name, "one whole frame");
                }
                Message decoded;
                try
                {
                    decoded = Wire.Decode(body);
                }
                catch (ProtocolException e)
                {
                    Check(false, name, "decode failed: " + e.Message);
                    continue;
                }
                Check(decoded.Type.ToString().ToUpperInvariant() == (string)message["type"], name,
                    "type " + decoded.Type + " != " + message["type"]);
                var got = Fields(decoded);
                foreach (var kv in fields)
                {
                    object value;
                    var ok = got.TryGetValue(kv.Key, out value) && Same(value, kv.Value);
                    Check(ok, name, "field " + kv.Key + " decoded as " + Show(value) + ", want " + Show(kv.Value));
                }
                if (!(bool)v["canonical"])
                    continue;
                var frame = Encode((string)message["type"], fields);
                if (frame == null)
                {
                    Skipped++;
                    continue;
                }
                var mine = Hex.Encode(frame);
                Check(mine == hex, name, "encoded " + mine + "\n    want    " + hex);
            }
        }

        private static Dictionary<string, object> Fields(Message m)
        {
            var f = new Dictionary<string, object>();
            switch (m.Type)
            {
                case MessageType.Hello:
                    {
                        var h = (Hello)m;
                        f["version"] = h.Version;
                        f["device_id"] = h.DeviceId;
                        f["token"] = h.Token;
                        f["agent"] = h.Agent;
                        f["agent_version"] = h.AgentVersion;
                        f["dropped"] = h.Dropped;
                        f["stream"] = h.Stream;
                        break;
                    }
                case MessageType.Welcome:
                    {
                        var w = (Welcome)m;
                        f["version"] = w.Version;
                        f["last_seq"] = w.LastSeq;
                        f["max_frame_bytes"] = w.MaxFrameBytes;
                        f["max_batch_readings"] = w.MaxBatchReadings;
                        f["heartbeat_ms"] = w.HeartbeatMs;
                        f["minor"] = w.Minor;
                        break;
                    }
                case MessageType.Batch:
                    f["seq"] = ((Batch)m).Seq;
                    f["readings"] = new List<object>(((Batch)m).Readings).ToArray();
                    break;
                case MessageType.Ack:
                    {
                        var a = (Ack)m;
                        f["seq"] = a.Seq;
                        f["accepted"] = a.Accepted;
                        f["duplicate"] = a.Duplicate;
                        var rejects = new List<object>();
                        foreach (var r in a.Rejects)
                        {
                            rejects.Add(new List<KeyValuePair<string, object>>
                            {
                                new KeyValuePair<string, object>("index", r.Index),
                                new KeyValuePair<string, object>("code", r.Code),
                                new KeyValuePair<string, object>("path", r.Path),
                                new KeyValuePair<string, object>("message", r.Message),
                            });
                        }
                        f["rejects"] = rejects.ToArray();
                        break;
                    }
                case MessageType.Retry:
                    f["seq"] = ((Retry)m).Seq;
                    f["reason"] = ((Retry)m).Reason;
                    f["retry_after_ms"] = ((Retry)m).RetryAfterMs;
                    break;
                case MessageType.Ping:
                    f["nonce"] = ((Ping)m).Nonce;
                    break;
                case MessageType.Pong:
                    f["nonce"] = ((Pong)m).Nonce;
                    break;
                case MessageType.Error:
                    f["code"] = ((ErrorMessage)m).Code;
                    f["message"] = ((ErrorMessage)m).Message;
                    f["fatal"] = ((ErrorMessage)m).Fatal;
                    f["seq"] = ((ErrorMessage)m).Seq;
                    break;
                case MessageType.Bye:
                    f["reason"] = ((Bye)m).Reason;
                    break;
            }
            return f;
        }

        private static long L(JsonObject f, string key)
        {
            return long.Parse(((JsonNumber)f[key]).Text, CultureInfo.InvariantCulture);
        }

        /// <summary>The frame this client writes for a message; null when the API cannot express it.</summary>
        private static byte[] Encode(string type, JsonObject f)
        {
            switch (type)
            {
                case "HELLO":
                    return Wire.EncodeFrame(new Hello
                    {
                        Version = L(f, "version"),
                        DeviceId = (string)f["device_id"],
                        Token = (string)f["token"],
                        Agent = (string)f["agent"],
                        AgentVersion = (string)f["agent_version"],
                        Dropped = L(f, "dropped"),
                        Stream = f.Has("stream") ? (string)f["stream"] : "",
                    });
                case "WELCOME":
                    return Wire.EncodeFrame(new Welcome
                    {
                        Version = L(f, "version"),
                        LastSeq = L(f, "last_seq"),
                        MaxFrameBytes = L(f, "max_frame_bytes"),
                        MaxBatchReadings = L(f, "max_batch_readings"),
                        HeartbeatMs = L(f, "heartbeat_ms"),
                        Minor = f.Has("minor") ? L(f, "minor") : 0,
                    });
                case "BATCH":
                    {
                        var encoded = new List<byte[]>();
                        foreach (var r in (List<object>)f["readings"])
                        {
                            var reading = ToReading(r);
                            if (reading == null)
                                return null;
                            encoded.Add(reading.Encode());
                        }
                        return Wire.EncodeBatchFrame(L(f, "seq"), encoded);
                    }
                case "ACK":
                    {
                        var rejects = new List<Reject>();
                        foreach (JsonObject r in (List<object>)f["rejects"])
                            rejects.Add(new Reject { Index = L(r, "index"), Code = (string)r["code"], Path = (string)r["path"], Message = (string)r["message"] });
                        return Wire.EncodeFrame(new Ack { Seq = L(f, "seq"), Accepted = L(f, "accepted"), Duplicate = L(f, "duplicate"), Rejects = rejects });
                    }
                case "RETRY":
                    return Wire.EncodeFrame(new Retry { Seq = L(f, "seq"), Reason = (string)f["reason"], RetryAfterMs = L(f, "retry_after_ms") });
                case "PING":
                    return Wire.EncodeFrame(new Ping { Nonce = L(f, "nonce") });
                case "PONG":
                    return Wire.EncodeFrame(new Pong { Nonce = L(f, "nonce") });
                case "ERROR":
                    return Wire.EncodeFrame(new ErrorMessage
                    {
                        Code = (string)f["code"],
                        Message = (string)f["message"],
                        Fatal = (bool)f["fatal"],
                        Seq = f.Has("seq") ? L(f, "seq") : 0,
                    });
                case "BYE":
                    return Wire.EncodeFrame(new Bye { Reason = (string)f["reason"] });
                default:
                    return null;
            }
        }

        /// <summary>
        /// The reading the typed API builds from its JSON form: a JSON integer is AddInteger, a
        /// JSON float AddNumber, and so on. Null when the API cannot express it (a ts that is
        /// not an int64, an int beyond int64, a tag value that is not a string, not 6 fields).
        /// </summary>
        public static Reading ToReading(object json)
        {
            var a = json as List<object>;
            if (a == null || a.Count != 6 || !(a[0] is string) || !(a[1] is string))
                return null;
            long ts;
            var tsn = a[2] as JsonNumber;
            if (tsn == null || !tsn.IsInteger || !long.TryParse(tsn.Text, NumberStyles.Integer, CultureInfo.InvariantCulture, out ts))
                return null;
            if (a[4] != null && !(a[4] is string))
                return null;
            var unit = (string)a[4];
            List<KeyValuePair<string, string>> tags = null;
            if (a[5] != null)
            {
                var t = a[5] as JsonObject;
                if (t == null)
                    return null;
                tags = new List<KeyValuePair<string, string>>();
                foreach (var kv in t)
                {
                    if (!(kv.Value is string))
                        return null;
                    tags.Add(new KeyValuePair<string, string>(kv.Key, (string)kv.Value));
                }
            }
            var sensor = (string)a[0];
            var kind = (string)a[1];
            var v = a[3];
            if (v is bool)
                return Reading.Bool(sensor, kind, ts, (bool)v, unit, tags);
            if (v is string)
                return Reading.Text(sensor, kind, ts, (string)v, unit, tags);
            var n = v as JsonNumber;
            if (n != null)
            {
                if (!n.IsInteger)
                    return Reading.Number(sensor, kind, ts, n.Double, unit, tags);
                long i;
                if (!long.TryParse(n.Text, NumberStyles.Integer, CultureInfo.InvariantCulture, out i))
                    return null;
                return Reading.Integer(sensor, kind, ts, i, unit, tags);
            }
            var o = v as JsonObject;
            if (o == null)
                return null;
            var obj = new ObjectValue();
            foreach (var kv in o)
            {
                if (kv.Value is bool)
                    obj.Bool(kv.Key, (bool)kv.Value);
                else if (kv.Value is string)
                    obj.Text(kv.Key, (string)kv.Value);
                else if (kv.Value is JsonNumber && !((JsonNumber)kv.Value).IsInteger)
                    obj.Number(kv.Key, ((JsonNumber)kv.Value).Double);
                else if (kv.Value is JsonNumber)
                    obj.Integer(kv.Key, long.Parse(((JsonNumber)kv.Value).Text, CultureInfo.InvariantCulture));
                else
                    return null;
            }
            return Reading.Object(sensor, kind, ts, obj, unit, tags);
        }

        // ---- frames_invalid.json: what a receiver in the given role and state answers

        private static readonly Dictionary<string, MessageType[]> Allowed = new Dictionary<string, MessageType[]>
        {
            // receiver/state -> what its peer may send then (docs/protocol.md §9)
            { "collector/await_hello", new[] { MessageType.Hello, MessageType.Error, MessageType.Bye } },
            { "collector/ready", new[] { MessageType.Batch, MessageType.Ping, MessageType.Pong, MessageType.Error, MessageType.Bye } },
            { "agent/await_welcome", new[] { MessageType.Welcome, MessageType.Error, MessageType.Bye } },
            { "agent/ready", new[] { MessageType.Ack, MessageType.Retry, MessageType.Ping, MessageType.Pong, MessageType.Error, MessageType.Bye } },
        };

        private void FramesInvalid(List<object> vectors)
        {
            foreach (JsonObject v in vectors)
            {
                var name = (string)v["name"];
                var receiver = (string)v["receiver"];
                var state = (string)v["state"];
                var events = new List<string>();
                var badFrames = 0;
                var bytes = Hex.Decode((string)v["hex"]);
                using (var ms = new MemoryStream(bytes))
                {
                    while (true)
                    {
                        Message m;
                        try
                        {
                            var body = Framing.ReadFrameAsync(ms, Wire.DefaultMaxFrameBytes).GetAwaiter().GetResult();
                            if (body == null)
                                break;
                            m = Wire.Decode(body);
                        }
                        catch (ProtocolException e)
                        {
                            if (!e.Fatal && ++badFrames > 16)
                            {
                                events.Add("error too_many_bad_frames fatal");
                                break;
                            }
                            events.Add("error " + e.Code + (e.Fatal ? " fatal" : ""));
                            if (e.Fatal)
                                break;
                            continue;
                        }
                        if (Array.IndexOf(Allowed[receiver + "/" + state], m.Type) < 0)
                        {
                            var fatal = state != "ready";
                            if (!fatal && ++badFrames > 16)
                            {
                                events.Add("error too_many_bad_frames fatal");
                                break;
                            }
                            events.Add("error unexpected_message" + (fatal ? " fatal" : ""));
                            if (fatal)
                                break;
                            continue;
                        }
                        events.Add("event " + m.Type.ToString().ToUpperInvariant());
                        if (m.Type == MessageType.Hello || m.Type == MessageType.Welcome)
                            state = "ready";
                    }
                }
                var want = new List<string>();
                foreach (JsonObject step in (List<object>)v["expect"])
                {
                    if (step.Has("event"))
                        want.Add("event " + step["event"]);
                    else
                        want.Add("error " + step["error"] + ((bool)step["fatal"] ? " fatal" : ""));
                }
                Check(string.Join("; ", events) == string.Join("; ", want), name,
                    "got [" + string.Join("; ", events) + "], want [" + string.Join("; ", want) + "]");
            }
        }

        // ---- readings.json

        private void Readings(List<object> vectors)
        {
            foreach (JsonObject v in vectors)
            {
                var name = (string)v["name"];
                var hex = (string)v["hex"];
                object decoded = null;
                try
                {
                    decoded = MsgPackReader.Decode(Hex.Decode(hex));
                }
                catch (MsgPackException e)
                {
                    Check(false, name, "decode failed: " + e.Message);
                    continue;
                }
                var json = v["reading"];
                if (json == null)
                {
                    Skipped++;
                    continue;
                }
                Check(Same(decoded, json), name, "decoded " + Show(decoded) + ", want " + Show(json));
                var reading = ToReading(json);
                if (reading == null)
                {
                    Skipped++;
                    continue;
                }
                var mine = Hex.Encode(reading.Encode());
                Check(mine == hex, name, "encoded " + mine + "\n    want    " + hex);
            }
        }

        // ---- comparing decoded msgpack with JSON

        public static bool Same(object got, object want)
        {
            if (want == null)
                return got == null;
            if (want is bool || want is string)
                return want.Equals(got);
            var n = want as JsonNumber;
            if (n != null)
            {
                if (n.IsInteger)
                {
                    if (got is long)
                        return (decimal)(long)got == n.Decimal;
                    if (got is ulong)
                        return (decimal)(ulong)got == n.Decimal;
                    if (got is MsgPackTimestamp)
                        return ((MsgPackTimestamp)got).TotalNanoseconds == n.Decimal;
                    if (got is double)
                        return (double)got == n.Double;
                    return false;
                }
                return got is double && (double)got == n.Double;
            }
            var list = want as List<object>;
            if (list != null)
            {
                var arr = got as object[];
                if (arr == null || arr.Length != list.Count)
                    return false;
                for (var i = 0; i < arr.Length; i++)
                    if (!Same(arr[i], list[i]))
                        return false;
                return true;
            }
            var obj = (JsonObject)want;
            var map = got as List<KeyValuePair<string, object>>;
            if (map == null || map.Count != obj.Count)
                return false;
            foreach (var kv in map)
                if (!obj.Has(kv.Key) || !Same(kv.Value, obj[kv.Key]))
                    return false;
            return true;
        }

        public static string Show(object v)
        {
            if (v == null)
                return "null";
            if (v is string)
                return Json.Quote((string)v);
            if (v is bool)
                return (bool)v ? "true" : "false";
            if (v is double)
                return ((double)v).ToString("R", CultureInfo.InvariantCulture);
            if (v is MsgPackTimestamp)
                return ((MsgPackTimestamp)v).TotalNanoseconds.ToString(CultureInfo.InvariantCulture);
            var parts = new List<string>();
            if (v is object[])
            {
                foreach (var x in (object[])v)
                    parts.Add(Show(x));
                return "[" + string.Join(", ", parts) + "]";
            }
            if (v is List<object>)
            {
                foreach (var x in (List<object>)v)
                    parts.Add(Show(x));
                return "[" + string.Join(", ", parts) + "]";
            }
            if (v is IEnumerable<KeyValuePair<string, object>>)
            {
                foreach (var kv in (IEnumerable<KeyValuePair<string, object>>)v)
                    parts.Add(Json.Quote(kv.Key) + ": " + Show(kv.Value));
                return "{" + string.Join(", ", parts) + "}";
            }
            return Convert.ToString(v, CultureInfo.InvariantCulture);
        }
    }

    public static class Hex
    {
        public static byte[] Decode(string hex)
        {
            var b = new byte[hex.Length / 2];
            for (var i = 0; i < b.Length; i++)
                b[i] = byte.Parse(hex.Substring(2 * i, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            return b;
        }

        public static string Encode(byte[] bytes)
        {
            var sb = new StringBuilder(bytes.Length * 2);
            foreach (var x in bytes)
                sb.Append(x.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }
    }
}
