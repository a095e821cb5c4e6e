// Checks that need no collector: msgpack forms at every width boundary, the bounded queue's
// drop-oldest policy and counters, and the file-backed queue keeping batches and stream id.
// The client here connects to 127.0.0.1 port 1, where nothing listens: it never gets a session.
using System;
using System.Collections.Generic;
using System.IO;
using System.Threading;

namespace SensorTelemetry.Tests
{
    public sealed class Units
    {
        public int Checked;
        public readonly List<string> Failures = new List<string>();

        private void Check(bool ok, string what)
        {
            Checked++;
            if (!ok)
                Failures.Add(what);
        }

        public void Run(string tmp)
        {
            Forms();
            Version11();
            RoundTrip();
            BoundedQueue();
            FileQueue(Path.Combine(tmp, "queue"));
        }

        private static string Int(long v)
        {
            var w = new MsgPackWriter();
            w.WriteInt(v);
            return Hex.Encode(w.ToArray());
        }

        private static string Str(int n)
        {
            var w = new MsgPackWriter();
            w.WriteString(new string('x', n));
            return Hex.Encode(w.ToArray()).Substring(0, 6);
        }

        private void Forms()
        {
            var ints = new Dictionary<long, string>
            {
                { 0, "00" }, { 127, "7f" }, { 128, "cc80" }, { 255, "ccff" }, { 256, "cd0100" },
                { 65535, "cdffff" }, { 65536, "ce00010000" }, { 4294967295, "ceffffffff" },
                { 4294967296, "cf0000000100000000" }, { long.MaxValue, "cf7fffffffffffffff" },
                { -1, "ff" }, { -32, "e0" }, { -33, "d0df" }, { -128, "d080" }, { -129, "d1ff7f" },
                { -32768, "d18000" }, { -32769, "d2ffff7fff" }, { int.MinValue, "d280000000" },
                { int.MinValue - 1L, "d3ffffffff7fffffff" }, { long.MinValue, "d38000000000000000" },
            };
            foreach (var kv in ints)
                Check(Int(kv.Key) == kv.Value, "int " + kv.Key + " -> " + Int(kv.Key) + ", want " + kv.Value);
            Check(Str(31).StartsWith("bf", StringComparison.Ordinal), "fixstr up to 31 bytes");
            Check(Str(32) == "d92078", "str8 from 32 bytes: " + Str(32));
            Check(Str(256) == "da0100", "str16 from 256 bytes: " + Str(256));
            var d = new MsgPackWriter();
            d.WriteDouble(1.0);
            Check(Hex.Encode(d.ToArray()) == "cb3ff0000000000000", "floats are always float64");
            foreach (var v in new[] { 0L, 1L, -1L, 300L, long.MaxValue, long.MinValue })
            {
                var w = new MsgPackWriter();
                w.WriteInt(v);
                Check(v.Equals(MsgPackReader.Decode(w.ToArray())), "int round trip " + v);
            }
        }

        // Protocol v1.1's trailing fields: HELLO stream, WELCOME minor, ERROR seq.
        private void Version11()
        {
            var hello = Wire.EncodeFrame(new Hello { DeviceId = "d", Token = "t", Stream = "0123456789abcdef0123456789abcdef" });
            Check(hello[4] == 0x98, "HELLO with a stream has 8 fields");
            var back = (Hello)Wire.Decode(Slice(hello));
            Check(back.Stream == "0123456789abcdef0123456789abcdef" && back.DeviceId == "d", "HELLO stream round trip");
            Check(Wire.EncodeFrame(new Hello { DeviceId = "d", Token = "t" })[4] == 0x97, "HELLO without a stream keeps v1.0's 7 fields");

            var w = new MsgPackWriter();
            w.WriteArrayHeader(7);
            foreach (var v in new long[] { 2, 1, 5, 1048576, 10000, 15000, 1 })
                w.WriteInt(v);
            var welcome = (Welcome)Wire.Decode(w.ToArray());
            Check(welcome.Minor == 1 && welcome.LastSeq == 5, "WELCOME minor");

            w = new MsgPackWriter();
            w.WriteArrayHeader(5);
            w.WriteInt(8);
            w.WriteString("bad_message");
            w.WriteString("readings is not an array");
            w.WriteBool(false);
            w.WriteInt(42);
            var error = (ErrorMessage)Wire.Decode(w.ToArray());
            Check(error.Seq == 42 && !error.Fatal && error.Code == "bad_message", "ERROR seq");
            var v10 = (ErrorMessage)Wire.Decode(Slice(Wire.EncodeFrame(new ErrorMessage { Code = "x", Fatal = true })));
            Check(v10.Seq == 0, "ERROR without seq names no batch");
        }

        private static byte[] Slice(byte[] frame)
        {
            var body = new byte[frame.Length - 4];
            Array.Copy(frame, 4, body, 0, body.Length);
            return body;
        }

        private void RoundTrip()
        {
            var tags = new[] { new KeyValuePair<string, string>("site", "lab") };
            var readings = new[]
            {
                Reading.Number("a/1", "temperature", 1, 21.5, "C", tags),
                Reading.Integer("a/2", "counter", 2, -7),
                Reading.Bool("a/3", "state", 3, true),
                Reading.Text("a/4", "event", 4, "dóor"),
                Reading.Object("a/5", "gps", 5, new ObjectValue().Number("lat", 1.5).Number("lon", -2).Integer("n", 3).Bool("b", false).Text("t", "x")),
            };
            foreach (var r in readings)
            {
                var bytes = r.Encode();
                var back = Reading.Decode(bytes);
                Check(Hex.Encode(back.Encode()) == Hex.Encode(bytes) && back.ValueType == r.ValueType && back.Sensor == r.Sensor,
                    "reading round trip " + r);
            }
        }

        private static TelemetryClientOptions Offline(string queueDir)
        {
            return new TelemetryClientOptions
            {
                Host = "127.0.0.1",
                Port = 1,
                DeviceId = "offline",
                MaxBatchReadings = 5,
                MaxQueuedReadings = 10,
                BatchDelay = TimeSpan.FromHours(1),
                QueueDirectory = queueDir,
                InitialBackoff = TimeSpan.FromSeconds(5),
            };
        }

        private void BoundedQueue()
        {
            var dropped = new List<BatchResult>();
            using (var c = new TelemetryClient(Offline(null)))
            {
                c.BatchCompleted += (s, r) => { lock (dropped) dropped.Add(r); };
                for (var i = 1; i <= 25; i++)
                    c.AddInteger("q/n", "counter", i, i);
                var st = c.Stats;
                Check(st.Queued == 10 && st.Dropped == 15, "bounded queue keeps 10 of 25, drops 15: queued=" + st.Queued + " dropped=" + st.Dropped);
                lock (dropped)
                {
                    Check(dropped.Count == 3, "three whole batches dropped, got " + dropped.Count);
                    foreach (var r in dropped)
                        Check(r.Outcome == BatchOutcome.Dropped && r.DropReason == "queue_full" && r.Count == 5, "dropped batch result");
                }
                var t = c.SendAsync(new[] { Reading.Integer("q/n", "counter", 99, 99) });
                Check(c.Stats.Dropped == 20 && c.Stats.Queued == 6, "the oldest unsent batch makes room: dropped=" + c.Stats.Dropped);
                Check(!t.IsCompleted, "a queued batch waits for its ACK");
                var other = new TelemetryClient(Offline(null));
                Check(other.StreamId != c.StreamId && other.StreamId.Length == 32, "a new stream id per in-memory client");
                other.Dispose();
            }
        }

        private void FileQueue(string dir)
        {
            string stream;
            using (var c = new TelemetryClient(Offline(dir)))
            {
                stream = c.StreamId;
                c.SendAsync(new[] { Reading.Number("f/1", "gauge", 1, 1.5), Reading.Text("f/2", "event", 2, "x") });
                c.SendAsync(new[] { Reading.Integer("f/3", "counter", 3, 3) });
                Check(c.Stats.Queued == 3, "three readings queued");
            }
            Check(Directory.GetFiles(dir, "*.batch").Length == 2, "one file per queued batch");
            using (var c = new TelemetryClient(Offline(dir)))
            {
                Check(c.StreamId == stream, "the stream id is kept with the queue");
                Check(c.Stats.Queued == 3, "queued batches are reloaded: " + c.Stats.Queued);
            }
        }
    }
}
