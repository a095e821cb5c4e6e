// One reading, [sensor, kind, ts, value, unit, tags] (docs/protocol.md §4), with a value whose
// msgpack type the caller chose explicitly: number (float64), integer, bool, text or object.
// The collector validates; this type only encodes (and decodes, for the file-backed queue).
using System;
using System.Collections.Generic;

namespace SensorTelemetry
{
    /// <summary>The msgpack type a reading's value is sent as.</summary>
    public enum ReadingValueType
    {
        Number,
        Integer,
        Bool,
        Text,
        Object,
    }

    /// <summary>
    /// The value of an object kind (gps, acceleration, user-defined): named scalar fields, sent
    /// as a msgpack map in the order they were added.
    /// </summary>
    public sealed class ObjectValue
    {
        private readonly List<KeyValuePair<string, object>> _fields = new List<KeyValuePair<string, object>>();

        public IList<KeyValuePair<string, object>> Fields
        {
            get { return _fields.AsReadOnly(); }
        }

        public ObjectValue Number(string name, double value)
        {
            return Put(name, value);
        }

        public ObjectValue Integer(string name, long value)
        {
            return Put(name, value);
        }

        public ObjectValue Bool(string name, bool value)
        {
            return Put(name, value);
        }

        public ObjectValue Text(string name, string value)
        {
            if (value == null)
                throw new ArgumentNullException("value");
            return Put(name, value);
        }

        private ObjectValue Put(string name, object value)
        {
            if (name == null)
                throw new ArgumentNullException("name");
            _fields.Add(new KeyValuePair<string, object>(name, value));
            return this;
        }
    }

    /// <summary>One immutable reading. Build it with the typed factory methods.</summary>
    public sealed class Reading
    {
        public readonly string Sensor;
        public readonly string Kind;
        /// <summary>Nanoseconds since 1970-01-01T00:00:00Z (UTC).</summary>
        public readonly long TimestampNs;
        public readonly ReadingValueType ValueType;
        /// <summary>double, long, bool, string or ObjectValue, per <see cref="ReadingValueType"/>.</summary>
        public readonly object Value;
        /// <summary>null: the kind's default unit.</summary>
        public readonly string Unit;
        /// <summary>null: no tags (nil on the wire).</summary>
        public readonly IList<KeyValuePair<string, string>> Tags;

        private Reading(string sensor, string kind, long ts, ReadingValueType type, object value, string unit,
            IEnumerable<KeyValuePair<string, string>> tags)
        {
            if (sensor == null)
                throw new ArgumentNullException("sensor");
            if (kind == null)
                throw new ArgumentNullException("kind");
            Sensor = sensor;
            Kind = kind;
            TimestampNs = ts;
            ValueType = type;
            Value = value;
            Unit = unit;
            Tags = tags == null ? null : new List<KeyValuePair<string, string>>(tags).AsReadOnly();
        }

        public static Reading Number(string sensor, string kind, long timestampNs, double value,
            string unit = null, IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            return new Reading(sensor, kind, timestampNs, ReadingValueType.Number, value, unit, tags);
        }

        public static Reading Integer(string sensor, string kind, long timestampNs, long value,
            string unit = null, IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            return new Reading(sensor, kind, timestampNs, ReadingValueType.Integer, value, unit, tags);
        }

        public static Reading Bool(string sensor, string kind, long timestampNs, bool value,
            string unit = null, IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            return new Reading(sensor, kind, timestampNs, ReadingValueType.Bool, value, unit, tags);
        }

        public static Reading Text(string sensor, string kind, long timestampNs, string value,
            string unit = null, IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            if (value == null)
                throw new ArgumentNullException("value");
            return new Reading(sensor, kind, timestampNs, ReadingValueType.Text, value, unit, tags);
        }

        public static Reading Object(string sensor, string kind, long timestampNs, ObjectValue value,
            string unit = null, IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            if (value == null)
                throw new ArgumentNullException("value");
            return new Reading(sensor, kind, timestampNs, ReadingValueType.Object, value, unit, tags);
        }

        /// <summary>Nanoseconds since the epoch for a point in time (UTC).</summary>
        public static long ToNanoseconds(DateTimeOffset time)
        {
            return (time.UtcTicks - UnixEpochTicks) * 100;
        }

        private const long UnixEpochTicks = 621355968000000000L;

        /// <summary>The msgpack array of this reading, as it goes inside a BATCH.</summary>
        public byte[] Encode()
        {
            var w = new MsgPackWriter(64);
            w.WriteArrayHeader(6);
            w.WriteString(Sensor);
            w.WriteString(Kind);
            w.WriteInt(TimestampNs);
            WriteScalar(w, Value);
            if (Unit == null)
                w.WriteNil();
            else
                w.WriteString(Unit);
            if (Tags == null)
                w.WriteNil();
            else
            {
                w.WriteMapHeader(Tags.Count);
                foreach (var t in Tags)
                {
                    w.WriteString(t.Key);
                    w.WriteString(t.Value);
                }
            }
            return w.ToArray();
        }

        private static void WriteScalar(MsgPackWriter w, object v)
        {
            if (v is double)
                w.WriteDouble((double)v);
            else if (v is long)
                w.WriteInt((long)v);
            else if (v is bool)
                w.WriteBool((bool)v);
            else if (v is string)
                w.WriteString((string)v);
            else
            {
                var o = (ObjectValue)v;
                w.WriteMapHeader(o.Fields.Count);
                foreach (var f in o.Fields)
                {
                    w.WriteString(f.Key);
                    WriteScalar(w, f.Value);
                }
            }
        }

        /// <summary>Decode a reading this class encoded (used to reload the file-backed queue).</summary>
        /// <exception cref="MsgPackException">the bytes are not such a reading</exception>
        public static Reading Decode(byte[] encoded)
        {
            var a = MsgPackReader.Decode(encoded) as object[];
            if (a == null || a.Length != 6 || !(a[0] is string) || !(a[1] is string) || !(a[2] is long))
                throw new MsgPackException("not a reading");
            var tags = a[5] == null ? null : new List<KeyValuePair<string, string>>();
            var map = a[5] as List<KeyValuePair<string, object>>;
            if (tags != null)
            {
                if (map == null)
                    throw new MsgPackException("tags must be a map");
                foreach (var kv in map)
                    tags.Add(new KeyValuePair<string, string>(kv.Key, kv.Value as string));
            }
            ReadingValueType type;
            var value = FromWire(a[3], out type);
            return new Reading((string)a[0], (string)a[1], (long)a[2], type, value, a[4] as string, tags);
        }

        private static object FromWire(object v, out ReadingValueType type)
        {
            if (v is double)
                type = ReadingValueType.Number;
            else if (v is long)
                type = ReadingValueType.Integer;
            else if (v is bool)
                type = ReadingValueType.Bool;
            else if (v is string)
                type = ReadingValueType.Text;
            else
            {
                var map = v as List<KeyValuePair<string, object>>;
                if (map == null)
                    throw new MsgPackException("not a reading value");
                type = ReadingValueType.Object;
                var o = new ObjectValue();
                foreach (var kv in map)
                {
                    ReadingValueType inner;
                    var fv = FromWire(kv.Value, out inner);
                    if (inner == ReadingValueType.Number)
                        o.Number(kv.Key, (double)fv);
                    else if (inner == ReadingValueType.Integer)
                        o.Integer(kv.Key, (long)fv);
                    else if (inner == ReadingValueType.Bool)
                        o.Bool(kv.Key, (bool)fv);
                    else if (inner == ReadingValueType.Text)
                        o.Text(kv.Key, (string)fv);
                    else
                        throw new MsgPackException("object fields are scalars");
                }
                return o;
            }
            return v;
        }

        public override string ToString()
        {
            return Sensor + " " + Kind + " @" + TimestampNs;
        }
    }
}
