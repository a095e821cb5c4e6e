// The bounded queue of readings waiting for an ACK: readings still being gathered into a batch
// (pending), then sealed batches in order. A batch gets its seq when it is first sent and keeps
// it until it is acknowledged or dropped. Optionally every sealed batch, the stream id and the
// seq counter are kept in a directory so that a restarted program resumes where it stopped
// (protocol v1.1: the stream id lives with whatever holds the seq counter and unacked batches).
// Not thread-safe: TelemetryClient holds its lock around every call.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Tasks;

namespace SensorTelemetry
{
    internal sealed class QueuedBatch
    {
        public long Id;
        public long Seq;
        public readonly List<Reading> Readings = new List<Reading>();
        public readonly List<byte[]> Encoded = new List<byte[]>();
        public int EncodedBytes;
        public readonly TaskCompletionSource<BatchResult> Completion =
            new TaskCompletionSource<BatchResult>(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    internal sealed class BatchQueue
    {
        private static readonly byte[] Magic = Encoding.ASCII.GetBytes("STB1");
        private readonly string _dir;
        private readonly int _maxReadings;
        private readonly LinkedList<QueuedBatch> _batches = new LinkedList<QueuedBatch>();
        private QueuedBatch _pending;
        private long _pendingSinceMs;
        private long _nextId = 1;
        private long _lastSeq;
        private long _seqFloor;
        private int _count;

        public readonly string StreamId;
        /// <summary>Readings dropped since the collector last accepted a HELLO reporting them.</summary>
        public long UnreportedDropped;
        /// <summary>Every reading dropped by this instance (queue full or refused by the collector).</summary>
        public long DroppedTotal;

        public BatchQueue(int maxReadings, string directory)
        {
            _maxReadings = maxReadings;
            _dir = directory;
            if (_dir == null)
            {
                StreamId = NewStreamId();
                return;
            }
            Directory.CreateDirectory(_dir);
            var streamFile = Path.Combine(_dir, "stream");
            if (File.Exists(streamFile))
                StreamId = File.ReadAllText(streamFile, Encoding.ASCII).Trim();
            else
            {
                StreamId = NewStreamId();
                WriteAtomically(streamFile, Encoding.ASCII.GetBytes(StreamId + "\n"));
            }
            var state = Path.Combine(_dir, "state");
            if (File.Exists(state))
            {
                var parts = File.ReadAllText(state, Encoding.ASCII).Split(' ');
                _lastSeq = long.Parse(parts[0], CultureInfo.InvariantCulture);
                UnreportedDropped = long.Parse(parts[1], CultureInfo.InvariantCulture);
            }
            var files = Directory.GetFiles(_dir, "*.batch");
            Array.Sort(files, StringComparer.Ordinal);
            foreach (var f in files)
            {
                var b = Load(f);
                _nextId = Math.Max(_nextId, b.Id + 1);
                _batches.AddLast(b);
                _count += b.Readings.Count;
            }
        }

        /// <summary>32 lowercase hex digits of a random 128-bit value.</summary>
        public static string NewStreamId()
        {
            var bytes = new byte[16];
            using (var rng = RandomNumberGenerator.Create())
                rng.GetBytes(bytes);
            var sb = new StringBuilder(32);
            foreach (var b in bytes)
                sb.Append(b.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }

        public int Count
        {
            get { return _count; }
        }

        public bool HasPending
        {
            get { return _pending != null; }
        }

        public long PendingSinceMs
        {
            get { return _pendingSinceMs; }
        }

        public QueuedBatch Head
        {
            get { return _batches.First == null ? null : _batches.First.Value; }
        }

        /// <summary>
        /// Add a reading to the batch being gathered (sealing that batch first when it is full);
        /// true when a batch was sealed or a new one started, i.e. the sender has news.
        /// </summary>
        public bool Add(Reading r, byte[] encoded, long nowMs, int maxReadings, int maxBodyBytes, List<QueuedBatch> dropped)
        {
            var news = false;
            if (_pending != null && (_pending.Readings.Count >= maxReadings || _pending.EncodedBytes + encoded.Length > maxBodyBytes))
            {
                Seal();
                news = true;
            }
            MakeRoom(1, dropped);
            if (_pending == null)
            {
                _pending = new QueuedBatch { Id = _nextId++ };
                _pendingSinceMs = nowMs;
                news = true;
            }
            _pending.Readings.Add(r);
            _pending.Encoded.Add(encoded);
            _pending.EncodedBytes += encoded.Length;
            _count++;
            return news;
        }

        /// <summary>Queue readings as a batch of their own (after sealing what is pending).</summary>
        public QueuedBatch AddBatch(IList<Reading> readings, IList<byte[]> encoded, List<QueuedBatch> dropped)
        {
            Seal();
            MakeRoom(readings.Count, dropped);
            var b = new QueuedBatch { Id = _nextId++ };
            for (var i = 0; i < readings.Count; i++)
            {
                b.Readings.Add(readings[i]);
                b.Encoded.Add(encoded[i]);
                b.EncodedBytes += encoded[i].Length;
            }
            _count += readings.Count;
            Store(b);
            _batches.AddLast(b);
            return b;
        }

        /// <summary>Turn the readings being gathered into a batch waiting to be sent.</summary>
        public void Seal()
        {
            if (_pending == null)
                return;
            Store(_pending);
            _batches.AddLast(_pending);
            _pending = null;
        }

        public List<QueuedBatch> Snapshot()
        {
            return new List<QueuedBatch>(_batches);
        }

        // Bounded: make room by dropping the oldest batch that was never sent, else the oldest
        // readings still being gathered. Every dropped reading is counted (and reported in HELLO).
        private void MakeRoom(int needed, List<QueuedBatch> dropped)
        {
            while (_count + needed > _maxReadings)
            {
                QueuedBatch victim = null;
                foreach (var b in _batches)
                {
                    if (b.Seq == 0)
                    {
                        victim = b;
                        break;
                    }
                }
                if (victim != null)
                {
                    Remove(victim);
                    dropped.Add(victim);
                    UnreportedDropped += victim.Readings.Count;
                    DroppedTotal += victim.Readings.Count;
                    SaveState();
                    continue;
                }
                if (_pending == null || _pending.Readings.Count == 0)
                    throw new InvalidOperationException("the queue is full of batches in flight; raise MaxQueuedReadings");
                _pending.EncodedBytes -= _pending.Encoded[0].Length;
                _pending.Readings.RemoveAt(0);
                _pending.Encoded.RemoveAt(0);
                _count--;
                UnreportedDropped++;
                DroppedTotal++;
                SaveState();
            }
        }

        /// <summary>WELCOME.last_seq: batches not sent yet continue after it.</summary>
        public void OnWelcome(long lastSeq)
        {
            _seqFloor = lastSeq;
        }

        /// <summary>The collector accepted a HELLO that reported the dropped count.</summary>
        public void DroppedReported(long reported)
        {
            UnreportedDropped = Math.Max(0, UnreportedDropped - reported);
            SaveState();
        }

        /// <summary>Give the head batch its seq (once; a resend keeps it).</summary>
        public void AssignSeq(QueuedBatch b)
        {
            if (b.Seq != 0)
                return;
            _lastSeq = Math.Max(_lastSeq, _seqFloor) + 1;
            b.Seq = _lastSeq;
            SaveState(); // the counter first: a crash in between leaves a gap, never a reuse
            Store(b);
        }

        public void Remove(QueuedBatch b)
        {
            _batches.Remove(b);
            _count -= b.Readings.Count;
            if (_dir != null)
                File.Delete(BatchPath(b.Id));
        }

        /// <summary>Count readings dropped outside MakeRoom (a batch the collector refused).</summary>
        public void CountDropped(int readings)
        {
            UnreportedDropped += readings;
            DroppedTotal += readings;
            SaveState();
        }

        // -- the file-backed form: one file per sealed batch, written to a temporary name and
        // renamed, so a crash leaves either the old or the new file, never half of one.

        private string BatchPath(long id)
        {
            return Path.Combine(_dir, id.ToString("D16", CultureInfo.InvariantCulture) + ".batch");
        }

        private void SaveState()
        {
            if (_dir == null)
                return;
            var text = _lastSeq.ToString(CultureInfo.InvariantCulture) + " " + UnreportedDropped.ToString(CultureInfo.InvariantCulture);
            WriteAtomically(Path.Combine(_dir, "state"), Encoding.ASCII.GetBytes(text));
        }

        private void Store(QueuedBatch b)
        {
            if (_dir == null)
                return;
            using (var ms = new MemoryStream(b.EncodedBytes + 16 + 4 * b.Encoded.Count))
            using (var w = new BinaryWriter(ms))
            {
                w.Write(Magic);
                w.Write(b.Seq);
                w.Write(b.Encoded.Count);
                foreach (var e in b.Encoded)
                {
                    w.Write(e.Length);
                    w.Write(e);
                }
                w.Flush();
                WriteAtomically(BatchPath(b.Id), ms.ToArray());
            }
        }

        private static QueuedBatch Load(string path)
        {
            var id = long.Parse(Path.GetFileNameWithoutExtension(path), CultureInfo.InvariantCulture);
            using (var r = new BinaryReader(File.OpenRead(path)))
            {
                var magic = r.ReadBytes(4);
                if (magic.Length != 4 || magic[0] != Magic[0] || magic[1] != Magic[1] || magic[2] != Magic[2] || magic[3] != Magic[3])
                    throw new InvalidDataException(path + ": not a queued batch");
                var b = new QueuedBatch { Id = id, Seq = r.ReadInt64() };
                var n = r.ReadInt32();
                for (var i = 0; i < n; i++)
                {
                    var e = r.ReadBytes(r.ReadInt32());
                    b.Encoded.Add(e);
                    b.EncodedBytes += e.Length;
                    b.Readings.Add(Reading.Decode(e));
                }
                return b;
            }
        }

        private static void WriteAtomically(string path, byte[] data)
        {
            var tmp = path + ".tmp";
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            {
                fs.Write(data, 0, data.Length);
                fs.Flush(true);
            }
            if (File.Exists(path))
                File.Replace(tmp, path, null);
            else
                File.Move(tmp, path);
        }
    }
}
