// A small JSON reader for the test vectors: objects keep their key order, numbers keep their
// text (64-bit integers and ints beyond int64 stay exact; "21" and "21.0" stay different).
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Text;

namespace SensorTelemetry.Tests
{
    public sealed class JsonNumber
    {
        public readonly string Text;

        public JsonNumber(string text)
        {
            Text = text;
        }

        public bool IsInteger
        {
            get { return Text.IndexOfAny(new[] { '.', 'e', 'E' }) < 0; }
        }

        public decimal Decimal
        {
            get { return decimal.Parse(Text, NumberStyles.Float, CultureInfo.InvariantCulture); }
        }

        public double Double
        {
            get { return double.Parse(Text, NumberStyles.Float, CultureInfo.InvariantCulture); }
        }

        public override string ToString()
        {
            return Text;
        }
    }

    /// <summary>Values: null, bool, string, JsonNumber, List&lt;object&gt;, JsonObject.</summary>
    public sealed class JsonObject : List<KeyValuePair<string, object>>
    {
        public object this[string key]
        {
            get
            {
                foreach (var kv in this)
                    if (kv.Key == key)
                        return kv.Value;
                throw new KeyNotFoundException(key);
            }
        }

        public bool Has(string key)
        {
            foreach (var kv in this)
                if (kv.Key == key)
                    return true;
            return false;
        }
    }

    public static class Json
    {
        public static object Parse(string text)
        {
            var pos = 0;
            var v = Value(text, ref pos);
            Ws(text, ref pos);
            if (pos != text.Length)
                throw new FormatException("trailing characters at " + pos);
            return v;
        }

        private static void Ws(string s, ref int p)
        {
            while (p < s.Length && char.IsWhiteSpace(s[p]))
                p++;
        }

        private static object Value(string s, ref int p)
        {
            Ws(s, ref p);
            var c = s[p];
            if (c == '{')
            {
                p++;
                var o = new JsonObject();
                Ws(s, ref p);
                if (s[p] == '}')
                {
                    p++;
                    return o;
                }
                while (true)
                {
                    Ws(s, ref p);
                    var k = Str(s, ref p);
                    Ws(s, ref p);
                    Expect(s, ref p, ':');
                    o.Add(new KeyValuePair<string, object>(k, Value(s, ref p)));
                    Ws(s, ref p);
                    if (s[p] == ',')
                    {
                        p++;
                        continue;
                    }
                    Expect(s, ref p, '}');
                    return o;
                }
            }
            if (c == '[')
            {
                p++;
                var a = new List<object>();
                Ws(s, ref p);
                if (s[p] == ']')
                {
                    p++;
                    return a;
                }
                while (true)
                {
                    a.Add(Value(s, ref p));
                    Ws(s, ref p);
                    if (s[p] == ',')
                    {
                        p++;
                        continue;
                    }
                    Expect(s, ref p, ']');
                    return a;
                }
            }
            if (c == '"')
                return Str(s, ref p);
            if (string.CompareOrdinal(s, p, "true", 0, 4) == 0)
            {
                p += 4;
                return true;
            }
            if (string.CompareOrdinal(s, p, "false", 0, 5) == 0)
            {
                p += 5;
                return false;
            }
            if (string.CompareOrdinal(s, p, "null", 0, 4) == 0)
            {
                p += 4;
                return null;
            }
            var start = p;
            while (p < s.Length && "+-0123456789.eE".IndexOf(s[p]) >= 0)
                p++;
            if (p == start)
                throw new FormatException("unexpected '" + c + "' at " + p);
            return new JsonNumber(s.Substring(start, p - start));
        }

        private static void Expect(string s, ref int p, char c)
        {
            if (s[p] != c)
                throw new FormatException("expected '" + c + "' at " + p);
            p++;
        }

        private static string Str(string s, ref int p)
        {
            Expect(s, ref p, '"');
            var sb = new StringBuilder();
            while (s[p] != '"')
            {
                var c = s[p++];
                if (c != '\\')
                {
                    sb.Append(c);
                    continue;
                }
                var e = s[p++];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u':
                        sb.Append((char)int.Parse(s.Substring(p, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                        p += 4;
                        break;
                    default: sb.Append(e); break;
                }
            }
            p++;
            return sb.ToString();
        }

        /// <summary>JSON text for a string (used for the test program's output lines).</summary>
        public static string Quote(string s)
        {
            var sb = new StringBuilder("\"");
            foreach (var c in s)
            {
                if (c == '"' || c == '\\')
                    sb.Append('\\').Append(c);
                else if (c < 0x20)
                    sb.AppendFormat(CultureInfo.InvariantCulture, "\\u{0:x4}", (int)c);
                else
                    sb.Append(c);
            }
            return sb.Append('"').ToString();
        }
    }
}
