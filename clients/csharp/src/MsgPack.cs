// The msgpack subset of wire protocol v1 (docs/protocol.md §2): a writer that always picks
// the shortest form (as the reference encoder does) and writes every float as float64, and a
// reader that enforces the protocol's decoder limits (§8) before it allocates anything.
// No I/O here: both work on byte arrays.
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace SensorTelemetry
{
    /// <summary>The bytes are not one valid msgpack value within the protocol's limits.</summary>
    public sealed class MsgPackException : Exception
    {
        public MsgPackException(string message) : base(message) { }
    }

    /// <summary>A decoded msgpack Timestamp extension (type -1).</summary>
    public struct MsgPackTimestamp
    {
        public readonly long Seconds;
        public readonly uint Nanoseconds;

        public MsgPackTimestamp(long seconds, uint nanoseconds)
        {
            Seconds = seconds;
            Nanoseconds = nanoseconds;
        }

        /// <summary>Seconds × 10^9 + nanoseconds; decimal because it may exceed int64.</summary>
        public decimal TotalNanoseconds
        {
            get { return (decimal)Seconds * 1000000000m + Nanoseconds; }
        }
    }

    /// <summary>A decoded ext value other than a Timestamp (never valid in the protocol).</summary>
    public sealed class MsgPackExt
    {
        public readonly sbyte Type;
        public readonly byte[] Data;

        public MsgPackExt(sbyte type, byte[] data)
        {
            Type = type;
            Data = data;
        }
    }

    /// <summary>Appends msgpack values to a growing buffer, shortest form first.</summary>
    public sealed class MsgPackWriter
    {
        private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);
        private byte[] _buf;
        private int _len;

        public MsgPackWriter(int capacity = 256)
        {
            _buf = new byte[Math.Max(16, capacity)];
        }

        public int Length
        {
            get { return _len; }
        }

        public byte[] ToArray()
        {
            var copy = new byte[_len];
            Buffer.BlockCopy(_buf, 0, copy, 0, _len);
            return copy;
        }

        private void Ensure(int extra)
        {
            if (_len + extra <= _buf.Length)
                return;
            var size = _buf.Length * 2;
            while (size < _len + extra)
                size *= 2;
            Array.Resize(ref _buf, size);
        }

        private void Byte(byte b)
        {
            Ensure(1);
            _buf[_len++] = b;
        }

        private void BigEndian(ulong v, int bytes)
        {
            Ensure(bytes);
            for (var i = bytes - 1; i >= 0; i--)
                _buf[_len++] = (byte)(v >> (8 * i));
        }

        public void WriteRaw(byte[] bytes)
        {
            Ensure(bytes.Length);
            Buffer.BlockCopy(bytes, 0, _buf, _len, bytes.Length);
            _len += bytes.Length;
        }

        public void WriteNil()
        {
            Byte(0xc0);
        }

        public void WriteBool(bool v)
        {
            Byte(v ? (byte)0xc3 : (byte)0xc2);
        }

        public void WriteInt(long v)
        {
            if (v >= 0)
            {
                WriteUInt((ulong)v);
                return;
            }
            if (v >= -32)
                Byte((byte)(sbyte)v);
            else if (v >= sbyte.MinValue)
            {
                Byte(0xd0);
                BigEndian((ulong)v, 1);
            }
            else if (v >= short.MinValue)
            {
                Byte(0xd1);
                BigEndian((ulong)v, 2);
            }
            else if (v >= int.MinValue)
            {
                Byte(0xd2);
                BigEndian((ulong)v, 4);
            }
            else
            {
                Byte(0xd3);
                BigEndian((ulong)v, 8);
            }
        }

        public void WriteUInt(ulong v)
        {
            if (v < 0x80)
                Byte((byte)v);
            else if (v <= byte.MaxValue)
            {
                Byte(0xcc);
                BigEndian(v, 1);
            }
            else if (v <= ushort.MaxValue)
            {
                Byte(0xcd);
                BigEndian(v, 2);
            }
            else if (v <= uint.MaxValue)
            {
                Byte(0xce);
                BigEndian(v, 4);
            }
            else
            {
                Byte(0xcf);
                BigEndian(v, 8);
            }
        }

        /// <summary>Always float64 (0xcb): protocol v1.1 makes float32 a decoder-only form.</summary>
        public void WriteDouble(double v)
        {
            Byte(0xcb);
            BigEndian((ulong)BitConverter.DoubleToInt64Bits(v), 8);
        }

        public void WriteString(string s)
        {
            var bytes = Utf8.GetBytes(s);
            var n = bytes.Length;
            if (n < 32)
                Byte((byte)(0xa0 | n));
            else if (n <= byte.MaxValue)
            {
                Byte(0xd9);
                BigEndian((ulong)n, 1);
            }
            else if (n <= ushort.MaxValue)
            {
                Byte(0xda);
                BigEndian((ulong)n, 2);
            }
            else
            {
                Byte(0xdb);
                BigEndian((ulong)n, 4);
            }
            WriteRaw(bytes);
        }

        public void WriteArrayHeader(int n)
        {
            if (n < 16)
                Byte((byte)(0x90 | n));
            else if (n <= ushort.MaxValue)
            {
                Byte(0xdc);
                BigEndian((ulong)n, 2);
            }
            else
            {
                Byte(0xdd);
                BigEndian((ulong)n, 4);
            }
        }

        public void WriteMapHeader(int n)
        {
            if (n < 16)
                Byte((byte)(0x80 | n));
            else if (n <= ushort.MaxValue)
            {
                Byte(0xde);
                BigEndian((ulong)n, 2);
            }
            else
            {
                Byte(0xdf);
                BigEndian((ulong)n, 4);
            }
        }
    }

    /// <summary>
    /// Decodes exactly one msgpack value from a frame body into plain objects: null, bool,
    /// long (every int in int64 range), ulong (above it), double (float32 widened),
    /// string, object[] (arrays), List&lt;KeyValuePair&lt;string, object&gt;&gt; (maps, in wire
    /// order, str keys only), MsgPackTimestamp, MsgPackExt.
    /// </summary>
    public static class MsgPackReader
    {
        // The protocol's decoder limits (docs/protocol.md §8), checked on each declared length
        // before anything is allocated, so a few header bytes cannot claim megabytes.
        public const int MaxStrBytes = 4096;
        public const int MaxMapEntries = 64;
        public const int MaxMessageFields = 32;
        public const int MaxBatchReadings = 10000;
        public const int MaxInnerArrayLen = 64;
        public const int MaxExtBytes = 12;
        // Valid frames nest 4 levels; 32 leaves room for additive fields and stops a stack bomb.
        public const int MaxDepth = 32;

        private static readonly UTF8Encoding Utf8 = new UTF8Encoding(false, true);

        /// <summary>Decode one value that must fill <paramref name="body"/> exactly.</summary>
        /// <exception cref="MsgPackException">invalid msgpack, a limit exceeded, trailing bytes</exception>
        public static object Decode(byte[] body)
        {
            var pos = 0;
            var value = Read(body, ref pos, 0);
            if (pos != body.Length)
                throw new MsgPackException("trailing bytes after the value");
            return value;
        }

        private static void Need(byte[] b, int pos, long n)
        {
            if (n < 0 || pos + n > b.Length)
                throw new MsgPackException("value runs past the end of the body");
        }

        private static ulong Be(byte[] b, ref int pos, int n)
        {
            Need(b, pos, n);
            ulong v = 0;
            for (var i = 0; i < n; i++)
                v = (v << 8) | b[pos + i];
            pos += n;
            return v;
        }

        private static int ArrayLimit(int depth)
        {
            // depth 0: the message; depth 1: BATCH readings / ACK rejects; deeper: small arrays.
            return depth == 0 ? MaxMessageFields : depth == 1 ? MaxBatchReadings : MaxInnerArrayLen;
        }

        private static object Read(byte[] b, ref int pos, int depth)
        {
            if (depth > MaxDepth)
                throw new MsgPackException("nested deeper than " + MaxDepth);
            Need(b, pos, 1);
            var t = b[pos++];
            if (t <= 0x7f)
                return (long)t;
            if (t >= 0xe0)
                return (long)(sbyte)t;
            if ((t & 0xe0) == 0xa0)
                return Str(b, ref pos, t & 0x1f);
            if ((t & 0xf0) == 0x90)
                return Arr(b, ref pos, t & 0x0f, depth);
            if ((t & 0xf0) == 0x80)
                return Map(b, ref pos, t & 0x0f, depth);
            switch (t)
            {
                case 0xc0:
                    return null;
                case 0xc2:
                    return false;
                case 0xc3:
                    return true;
                case 0xc4:
                case 0xc5:
                case 0xc6:
                    throw new MsgPackException("bin values are not used by the protocol");
                case 0xc7:
                    return Ext(b, ref pos, (int)Be(b, ref pos, 1));
                case 0xc8:
                    return Ext(b, ref pos, (int)Be(b, ref pos, 2));
                case 0xc9:
                    return Ext(b, ref pos, (long)Be(b, ref pos, 4));
                case 0xca:
                    return (double)BitConverter.ToSingle(BitConverter.GetBytes((int)(uint)Be(b, ref pos, 4)), 0);
                case 0xcb:
                    return BitConverter.Int64BitsToDouble((long)Be(b, ref pos, 8));
                case 0xcc:
                    return (long)Be(b, ref pos, 1);
                case 0xcd:
                    return (long)Be(b, ref pos, 2);
                case 0xce:
                    return (long)Be(b, ref pos, 4);
                case 0xcf:
                    {
                        var v = Be(b, ref pos, 8);
                        if (v > long.MaxValue)
                            return v;
                        return (long)v;
                    }
                case 0xd0:
                    return (long)(sbyte)Be(b, ref pos, 1);
                case 0xd1:
                    return (long)(short)Be(b, ref pos, 2);
                case 0xd2:
                    return (long)(int)Be(b, ref pos, 4);
                case 0xd3:
                    return (long)Be(b, ref pos, 8);
                case 0xd4:
                    return Ext(b, ref pos, 1);
                case 0xd5:
                    return Ext(b, ref pos, 2);
                case 0xd6:
                    return Ext(b, ref pos, 4);
                case 0xd7:
                    return Ext(b, ref pos, 8);
                case 0xd8:
                    return Ext(b, ref pos, 16);
                case 0xd9:
                    return Str(b, ref pos, (long)Be(b, ref pos, 1));
                case 0xda:
                    return Str(b, ref pos, (long)Be(b, ref pos, 2));
                case 0xdb:
                    return Str(b, ref pos, (long)Be(b, ref pos, 4));
                case 0xdc:
                    return Arr(b, ref pos, (long)Be(b, ref pos, 2), depth);
                case 0xdd:
                    return Arr(b, ref pos, (long)Be(b, ref pos, 4), depth);
                case 0xde:
                    return Map(b, ref pos, (long)Be(b, ref pos, 2), depth);
                case 0xdf:
                    return Map(b, ref pos, (long)Be(b, ref pos, 4), depth);
                default:
                    throw new MsgPackException("byte 0xc1 is never used in msgpack");
            }
        }

        private static string Str(byte[] b, ref int pos, long n)
        {
            if (n > MaxStrBytes)
                throw new MsgPackException("str longer than " + MaxStrBytes + " bytes");
            Need(b, pos, n);
            string s;
            try
            {
                s = Utf8.GetString(b, pos, (int)n);
            }
            catch (ArgumentException)
            {
                throw new MsgPackException("str is not valid UTF-8");
            }
            pos += (int)n;
            return s;
        }

        private static object[] Arr(byte[] b, ref int pos, long n, int depth)
        {
            if (n > ArrayLimit(depth))
                throw new MsgPackException("array longer than " + ArrayLimit(depth));
            Need(b, pos, n); // every element takes at least one byte
            var items = new object[n];
            for (var i = 0; i < n; i++)
                items[i] = Read(b, ref pos, depth + 1);
            return items;
        }

        private static List<KeyValuePair<string, object>> Map(byte[] b, ref int pos, long n, int depth)
        {
            if (n > MaxMapEntries)
                throw new MsgPackException("map with more than " + MaxMapEntries + " entries");
            Need(b, pos, 2 * n);
            var entries = new List<KeyValuePair<string, object>>((int)n);
            for (var i = 0; i < n; i++)
            {
                var key = Read(b, ref pos, depth + 1) as string;
                if (key == null)
                    throw new MsgPackException("map keys must be strings");
                entries.Add(new KeyValuePair<string, object>(key, Read(b, ref pos, depth + 1)));
            }
            return entries;
        }

        private static object Ext(byte[] b, ref int pos, long n)
        {
            if (n > MaxExtBytes)
                throw new MsgPackException("ext longer than " + MaxExtBytes + " bytes");
            Need(b, pos, 1 + n);
            var type = (sbyte)b[pos++];
            var data = new byte[n];
            Buffer.BlockCopy(b, pos, data, 0, (int)n);
            pos += (int)n;
            if (type != -1)
                return new MsgPackExt(type, data);
            var p = 0;
            switch (n)
            {
                case 4:
                    return new MsgPackTimestamp((long)Be(data, ref p, 4), 0);
                case 8:
                    {
                        var v = Be(data, ref p, 8);
                        return new MsgPackTimestamp((long)(v & 0x3ffffffffUL), (uint)(v >> 34));
                    }
                case 12:
                    {
                        var ns = (uint)Be(data, ref p, 4);
                        return new MsgPackTimestamp((long)Be(data, ref p, 8), ns);
                    }
                default:
                    throw new MsgPackException("a Timestamp ext must be 4, 8 or 12 bytes");
            }
        }
    }

    /// <summary>Reads and writes whole frames: a 4-byte big-endian length, then the body.</summary>
    public static class Framing
    {
        public const int HeaderBytes = 4;

        /// <summary>Prefix <paramref name="body"/> with its length.</summary>
        public static byte[] Frame(byte[] body)
        {
            var frame = new byte[HeaderBytes + body.Length];
            WriteHeader(frame, body.Length);
            Buffer.BlockCopy(body, 0, frame, HeaderBytes, body.Length);
            return frame;
        }

        public static void WriteHeader(byte[] dest, int length)
        {
            dest[0] = (byte)(length >> 24);
            dest[1] = (byte)(length >> 16);
            dest[2] = (byte)(length >> 8);
            dest[3] = (byte)length;
        }

        /// <summary>
        /// Read one frame body with two reads (header, then body); null at a clean end of
        /// stream (a frame boundary). The declared length is checked before the body is read.
        /// </summary>
        /// <exception cref="ProtocolException">frame_too_large, truncated_frame, malformed_frame (N = 0)</exception>
        public static async System.Threading.Tasks.Task<byte[]> ReadFrameAsync(Stream stream, int maxFrameBytes)
        {
            var header = new byte[HeaderBytes];
            var got = await ReadFullyAsync(stream, header).ConfigureAwait(false);
            if (got == 0)
                return null;
            if (got < HeaderBytes)
                throw new ProtocolException(ErrorCodes.TruncatedFrame, "stream ended inside a frame header", true);
            var n = ((uint)header[0] << 24) | ((uint)header[1] << 16) | ((uint)header[2] << 8) | header[3];
            if (n > (uint)maxFrameBytes)
                throw new ProtocolException(ErrorCodes.FrameTooLarge, "frame of " + n + " bytes is over the limit of " + maxFrameBytes, true);
            var body = new byte[n];
            if (n == 0)
                throw new ProtocolException(ErrorCodes.MalformedFrame, "empty frame body", false);
            if (await ReadFullyAsync(stream, body).ConfigureAwait(false) < n)
                throw new ProtocolException(ErrorCodes.TruncatedFrame, "stream ended inside a frame body", true);
            return body;
        }

        private static async System.Threading.Tasks.Task<int> ReadFullyAsync(Stream stream, byte[] buf)
        {
            var got = 0;
            while (got < buf.Length)
            {
                var n = await stream.ReadAsync(buf, got, buf.Length - got).ConfigureAwait(false);
                if (n == 0)
                    break;
                got += n;
            }
            return got;
        }
    }
}
