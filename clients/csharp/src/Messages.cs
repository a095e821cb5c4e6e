// The nine messages of wire protocol v1 (+ the v1.1 trailing fields), their encoder and a
// strict decoder (docs/protocol.md §3).
// No I/O here: messages become bodies and bodies become messages.
using System;
using System.Collections.Generic;

namespace SensorTelemetry
{
    /// <summary>ERROR codes of docs/protocol.md §7 (and v1.1's session_replaced).</summary>
    public static class ErrorCodes
    {
        public const string MalformedFrame = "malformed_frame";
        public const string BadMessage = "bad_message";
        public const string UnexpectedMessage = "unexpected_message";
        public const string FrameTooLarge = "frame_too_large";
        public const string TooManyBadFrames = "too_many_bad_frames";
        public const string TruncatedFrame = "truncated_frame";
        public const string UnsupportedVersion = "unsupported_version";
        public const string AuthFailed = "auth_failed";
        public const string HandshakeTimeout = "handshake_timeout";
        public const string IdleTimeout = "idle_timeout";
        public const string ServerBusy = "server_busy";
        public const string ShuttingDown = "shutting_down";
        public const string InternalError = "internal_error";
        public const string SessionReplaced = "session_replaced";
    }

    /// <summary>
    /// The peer sent something the protocol forbids (or the stream broke inside a frame).
    /// <see cref="Code"/> is the ERROR code a receiver answers with.
    /// </summary>
    public class ProtocolException : Exception
    {
        public readonly string Code;
        public readonly bool Fatal;

        public ProtocolException(string code, string message, bool fatal) : base(code + ": " + message)
        {
            Code = code;
            Fatal = fatal;
        }
    }

    public enum MessageType
    {
        Hello = 1,
        Welcome = 2,
        Batch = 3,
        Ack = 4,
        Retry = 5,
        Ping = 6,
        Pong = 7,
        Error = 8,
        Bye = 9,
    }

    public abstract class Message
    {
        public abstract MessageType Type { get; }
    }

    public sealed class Hello : Message
    {
        public long Version = 1;
        public string DeviceId = "";
        public string Token = "";
        public string Agent = "";
        public string AgentVersion = "";
        public long Dropped;
        /// <summary>v1.1 stream id; "" (the device's default stream) is not sent at all.</summary>
        public string Stream = "";

        public override MessageType Type
        {
            get { return MessageType.Hello; }
        }
    }

    public sealed class Welcome : Message
    {
        public long Version = 1;
        public long LastSeq;
        public long MaxFrameBytes = Wire.DefaultMaxFrameBytes;
        public long MaxBatchReadings = Wire.DefaultMaxBatchReadings;
        public long HeartbeatMs = Wire.DefaultHeartbeatMs;
        /// <summary>v1.1: 1 when the collector speaks v1.1, 0 (absent) for a v1.0 collector.</summary>
        public long Minor;

        public override MessageType Type
        {
            get { return MessageType.Welcome; }
        }
    }

    public sealed class Batch : Message
    {
        public long Seq;
        /// <summary>Decoded readings, each still an untyped msgpack value (object[] when well formed).</summary>
        public IList<object> Readings = new object[0];

        public override MessageType Type
        {
            get { return MessageType.Batch; }
        }
    }

    /// <summary>One entry of an ACK's rejects.</summary>
    public sealed class Reject
    {
        public long Index;
        public string Code = "";
        public string Path = "";
        public string Message = "";
    }

    public sealed class Ack : Message
    {
        public long Seq;
        public long Accepted;
        public long Duplicate;
        public IList<Reject> Rejects = new Reject[0];

        public override MessageType Type
        {
            get { return MessageType.Ack; }
        }
    }

    public sealed class Retry : Message
    {
        public long Seq;
        public string Reason = "";
        public long RetryAfterMs;

        public override MessageType Type
        {
            get { return MessageType.Retry; }
        }
    }

    public sealed class Ping : Message
    {
        public long Nonce;

        public override MessageType Type
        {
            get { return MessageType.Ping; }
        }
    }

    public sealed class Pong : Message
    {
        public long Nonce;

        public override MessageType Type
        {
            get { return MessageType.Pong; }
        }
    }

    public sealed class ErrorMessage : Message
    {
        public string Code = "";
        public string Message = "";
        public bool Fatal = true;
        /// <summary>v1.1: the BATCH seq this error answers; 0 for none (always 0 from v1.0).</summary>
        public long Seq;

        public override MessageType Type
        {
            get { return MessageType.Error; }
        }
    }

    public sealed class Bye : Message
    {
        public string Reason = "";

        public override MessageType Type
        {
            get { return MessageType.Bye; }
        }
    }

    /// <summary>Encodes messages to frames and decodes frame bodies to messages.</summary>
    public static class Wire
    {
        public const long ProtocolVersion = 1;
        public const int DefaultMaxFrameBytes = 1048576;
        public const int DefaultMaxBatchReadings = 10000;
        public const int DefaultHeartbeatMs = 15000;

        /// <summary>The whole frame (length prefix included) for one message.</summary>
        public static byte[] EncodeFrame(Message message)
        {
            return Framing.Frame(EncodeBody(message));
        }

        /// <summary>
        /// A BATCH frame from readings already encoded one by one (see <see cref="Reading.Encode"/>).
        /// </summary>
        public static byte[] EncodeBatchFrame(long seq, IList<byte[]> encodedReadings)
        {
            var w = new MsgPackWriter(64 + encodedReadings.Count * 48);
            w.WriteArrayHeader(3);
            w.WriteInt((long)MessageType.Batch);
            w.WriteInt(seq);
            w.WriteArrayHeader(encodedReadings.Count);
            foreach (var r in encodedReadings)
                w.WriteRaw(r);
            return Framing.Frame(w.ToArray());
        }

        public static byte[] EncodeBody(Message message)
        {
            var w = new MsgPackWriter();
            switch (message.Type)
            {
                case MessageType.Hello:
                    {
                        var m = (Hello)message;
                        var withStream = !string.IsNullOrEmpty(m.Stream);
                        w.WriteArrayHeader(withStream ? 8 : 7);
                        w.WriteInt(1);
                        w.WriteInt(m.Version);
                        w.WriteString(m.DeviceId);
                        w.WriteString(m.Token);
                        w.WriteString(m.Agent);
                        w.WriteString(m.AgentVersion);
                        w.WriteInt(m.Dropped);
                        if (withStream)
                            w.WriteString(m.Stream);
                        break;
                    }
                case MessageType.Welcome:
                    {
                        var m = (Welcome)message;
                        w.WriteArrayHeader(m.Minor != 0 ? 7 : 6);
                        w.WriteInt(2);
                        w.WriteInt(m.Version);
                        w.WriteInt(m.LastSeq);
                        w.WriteInt(m.MaxFrameBytes);
                        w.WriteInt(m.MaxBatchReadings);
                        w.WriteInt(m.HeartbeatMs);
                        if (m.Minor != 0)
                            w.WriteInt(m.Minor);
                        break;
                    }
                case MessageType.Ack:
                    {
                        var m = (Ack)message;
                        w.WriteArrayHeader(5);
                        w.WriteInt(4);
                        w.WriteInt(m.Seq);
                        w.WriteInt(m.Accepted);
                        w.WriteInt(m.Duplicate);
                        w.WriteArrayHeader(m.Rejects.Count);
                        foreach (var r in m.Rejects)
                        {
                            w.WriteArrayHeader(4);
                            w.WriteInt(r.Index);
                            w.WriteString(r.Code);
                            w.WriteString(r.Path);
                            w.WriteString(r.Message);
                        }
                        break;
                    }
                case MessageType.Retry:
                    {
                        var m = (Retry)message;
                        w.WriteArrayHeader(4);
                        w.WriteInt(5);
                        w.WriteInt(m.Seq);
                        w.WriteString(m.Reason);
                        w.WriteInt(m.RetryAfterMs);
                        break;
                    }
                case MessageType.Ping:
                    w.WriteArrayHeader(2);
                    w.WriteInt(6);
                    w.WriteInt(((Ping)message).Nonce);
                    break;
                case MessageType.Pong:
                    w.WriteArrayHeader(2);
                    w.WriteInt(7);
                    w.WriteInt(((Pong)message).Nonce);
                    break;
                case MessageType.Error:
                    {
                        var m = (ErrorMessage)message;
                        w.WriteArrayHeader(m.Seq != 0 ? 5 : 4);
                        w.WriteInt(8);
                        w.WriteString(m.Code);
                        w.WriteString(m.Message);
                        w.WriteBool(m.Fatal);
                        if (m.Seq != 0)
                            w.WriteInt(m.Seq);
                        break;
                    }
                case MessageType.Bye:
                    w.WriteArrayHeader(2);
                    w.WriteInt(9);
                    w.WriteString(((Bye)message).Reason);
                    break;
                default:
                    throw new ArgumentException("BATCH frames are built with EncodeBatchFrame");
            }
            return w.ToArray();
        }

        /// <summary>Decode one frame body into its message.</summary>
        /// <exception cref="ProtocolException">malformed_frame (not msgpack within the limits) or bad_message (not a v1 message)</exception>
        public static Message Decode(byte[] body)
        {
            object value;
            try
            {
                value = MsgPackReader.Decode(body);
            }
            catch (MsgPackException e)
            {
                throw new ProtocolException(ErrorCodes.MalformedFrame, e.Message, false);
            }
            var f = value as object[];
            if (f == null || f.Length == 0)
                throw Bad("a message is a non-empty array");
            if (!(f[0] is long))
                throw Bad("the type code must be an int");
            switch ((long)f[0])
            {
                case 1:
                    return new Hello
                    {
                        Version = UInt(f, 1, "version"),
                        DeviceId = Str(f, 2, "device_id"),
                        Token = Str(f, 3, "token"),
                        Agent = OptStr(f, 4, "agent", ""),
                        AgentVersion = OptStr(f, 5, "agent_version", ""),
                        Dropped = OptUInt(f, 6, "dropped", 0),
                        Stream = OptStr(f, 7, "stream", ""),
                    };
                case 2:
                    return new Welcome
                    {
                        Version = UInt(f, 1, "version"),
                        LastSeq = UInt(f, 2, "last_seq"),
                        MaxFrameBytes = OptUInt(f, 3, "max_frame_bytes", DefaultMaxFrameBytes),
                        MaxBatchReadings = OptUInt(f, 4, "max_batch_readings", DefaultMaxBatchReadings),
                        HeartbeatMs = OptUInt(f, 5, "heartbeat_ms", DefaultHeartbeatMs),
                        Minor = OptUInt(f, 6, "minor", 0),
                    };
                case 3:
                    {
                        var seq = UInt(f, 1, "seq");
                        var readings = Field(f, 2, "readings") as object[];
                        if (readings == null)
                            throw Bad("BATCH readings must be an array");
                        return new Batch { Seq = seq, Readings = readings };
                    }
                case 4:
                    {
                        var ack = new Ack
                        {
                            Seq = UInt(f, 1, "seq"),
                            Accepted = UInt(f, 2, "accepted"),
                            Duplicate = UInt(f, 3, "duplicate"),
                        };
                        var rejects = Field(f, 4, "rejects") as object[];
                        if (rejects == null)
                            throw Bad("ACK rejects must be an array");
                        var list = new List<Reject>(rejects.Length);
                        foreach (var item in rejects)
                        {
                            var r = item as object[];
                            if (r == null || r.Length < 4)
                                throw Bad("a reject is [index, code, path, message]");
                            list.Add(new Reject
                            {
                                Index = UInt(r, 0, "index"),
                                Code = Str(r, 1, "code"),
                                Path = Str(r, 2, "path"),
                                Message = Str(r, 3, "message"),
                            });
                        }
                        ack.Rejects = list;
                        return ack;
                    }
                case 5:
                    return new Retry
                    {
                        Seq = UInt(f, 1, "seq"),
                        Reason = Str(f, 2, "reason"),
                        RetryAfterMs = UInt(f, 3, "retry_after_ms"),
                    };
                case 6:
                    return new Ping { Nonce = OptUInt(f, 1, "nonce", 0) };
                case 7:
                    return new Pong { Nonce = OptUInt(f, 1, "nonce", 0) };
                case 8:
                    {
                        var m = new ErrorMessage
                        {
                            Code = Str(f, 1, "code"),
                            Message = OptStr(f, 2, "message", ""),
                            Seq = OptUInt(f, 4, "seq", 0),
                        };
                        if (f.Length > 3)
                        {
                            if (!(f[3] is bool))
                                throw Bad("ERROR fatal must be a bool");
                            m.Fatal = (bool)f[3];
                        }
                        return m;
                    }
                case 9:
                    return new Bye { Reason = OptStr(f, 1, "reason", "") };
                default:
                    throw Bad("unknown message type " + f[0]);
            }
        }

        private static ProtocolException Bad(string message)
        {
            return new ProtocolException(ErrorCodes.BadMessage, message, false);
        }

        private static object Field(object[] f, int i, string name)
        {
            if (i >= f.Length)
                throw Bad("missing field " + name);
            return f[i];
        }

        private static long UInt(object[] f, int i, string name)
        {
            var v = Field(f, i, name);
            if (!(v is long) || (long)v < 0)
                throw Bad(name + " must be an int in 0 .. 2^63-1");
            return (long)v;
        }

        private static long OptUInt(object[] f, int i, string name, long dflt)
        {
            return i < f.Length ? UInt(f, i, name) : dflt;
        }

        private static string Str(object[] f, int i, string name)
        {
            var s = Field(f, i, name) as string;
            if (s == null)
                throw Bad(name + " must be a str");
            return s;
        }

        private static string OptStr(object[] f, int i, string name, string dflt)
        {
            return i < f.Length ? Str(f, i, name) : dflt;
        }
    }
}
