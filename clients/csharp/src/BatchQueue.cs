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
        /// <summary>
        /// Orders the queue (and names the batch's file): 16 digits of a counter, plus
        /// ".000001"-style suffixes for the parts of a batch split to fit the collector's
        /// limits, so that an ordinal sort of the names is the queue order.
        /// </summary>
        public string Name;
        public long Seq;
        /// <summary>Set when this batch is a part of a split one; Offset is its first reading's index there.</summary>
        public BatchGroup Group;
        public int Offset;
        public readonly List<Reading> Readings = new List<Reading>();
        public readonly List<byte[]> Encoded = new List<byte[]>();
        public int EncodedBytes;
        public readonly TaskCompletionSource<BatchResult> Completion =
            new TaskCompletionSource<BatchResult>(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>The parts of one batch that was split; completes the original batch's task once all are done.</summary>
    internal sealed class BatchGroup
    {
        public readonly TaskCompletionSource<BatchResult> Completion;
        public int Pending;
        private readonly BatchResult _sum;
        private readonly List<RejectedReading> _rejects = new List<RejectedReading>();

        public BatchGroup(TaskCompletionSource<BatchResult> completion, int count)
        {
            Completion = completion;
            _sum = new BatchResult { Outcome = BatchOutcome.Acknowledged, Count = count };
        }

        /// <summary>Add one part's result; returns the whole batch's result once every part is done.</summary>
        public BatchResult Add(QueuedBatch part, BatchResult r)
        {
            if (_sum.Seq == 0)
                _sum.Seq = r.Seq;
            _sum.Accepted += r.Accepted;
            _sum.Duplicate += r.Duplicate;
            foreach (var x in r.Rejects)
                _rejects.Add(new RejectedReading { Index = x.Index + part.Offset, Reading = x.Reading, Code = x.Code, Path = x.Path, Message = x.Message });
            if (r.Outcome == BatchOutcome.Dropped)
            {
                _sum.Outcome = BatchOutcome.Dropped;
                _sum.DropReason = r.DropReason;
            }
            if (--Pending > 0)
                return null;
            _sum.Rejects = _rejects.AsReadOnly();
            return _sum;
        }
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
        // Dropped counts wait for the next state write (a seq assignment, a reported HELLO or
        // Save): an fsync per dropped reading would slow a full queue down further.
        private bool _stateDirty;

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
                _nextId = Math.Max(_nextId, long.Parse(b.Name.Substring(0, 16), CultureInfo.InvariantCulture) + 1);
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
            if (!MakeRoom(1, dropped))
            {
                CountDropped(1); // full of the batch in flight: the new reading is the one dropped
                return news;
            }
            if (_pending == null)
            {
                _pending = new QueuedBatch { Name = NextName() };
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
            var b = new QueuedBatch { Name = NextName() };
            for (var i = 0; i < readings.Count; i++)
            {
                b.Readings.Add(readings[i]);
                b.Encoded.Add(encoded[i]);
                b.EncodedBytes += encoded[i].Length;
            }
            if (!MakeRoom(readings.Count, dropped))
            {
                CountDropped(readings.Count); // no room even after dropping every unsent batch
                dropped.Add(b);
                return b;
            }
            _count += readings.Count;
            Store(b);
            _batches.AddLast(b);
            return b;
        }

        private string NextName()
        {
            return (_nextId++).ToString("D16", CultureInfo.InvariantCulture);
        }

        /// <summary>
        /// Split the head batch into parts within the collector's limits (a batch gathered or
        /// sent under larger limits than the current WELCOME announces). Parts get new seqs;
        /// readings of a part that was already stored come back as duplicates.
        /// </summary>
        public void SplitHead(int maxReadings, int maxBodyBytes)
        {
            var head = Head;
            if (head == null || (head.Readings.Count <= maxReadings && head.EncodedBytes <= maxBodyBytes))
                return;
            var group = head.Group;
            if (group == null)
                group = new BatchGroup(head.Completion, head.Readings.Count) { Pending = 1 };
            var parts = new List<QueuedBatch>();
            QueuedBatch part = null;
            for (var i = 0; i < head.Readings.Count; i++)
            {
                var e = head.Encoded[i];
                if (part == null || part.Readings.Count >= maxReadings || (part.Readings.Count > 0 && part.EncodedBytes + e.Length > maxBodyBytes))
                {
                    part = new QueuedBatch
                    {
                        Name = head.Name + "." + parts.Count.ToString("D6", CultureInfo.InvariantCulture),
                        Group = group,
                        Offset = head.Offset + i,
                    };
                    parts.Add(part);
                }
                part.Readings.Add(head.Readings[i]);
                part.Encoded.Add(e);
                part.EncodedBytes += e.Length;
            }
            group.Pending += parts.Count - 1;
            _batches.RemoveFirst();
            if (_dir != null)
                File.Delete(BatchPath(head.Name));
            for (var i = parts.Count - 1; i >= 0; i--)
            {
                Store(parts[i]);
                _batches.AddFirst(parts[i]);
            }
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
        private bool MakeRoom(int needed, List<QueuedBatch> dropped)
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
                    _stateDirty = true;
                    continue;
                }
                if (_pending == null || _pending.Readings.Count == 0)
                    return false;
                _pending.EncodedBytes -= _pending.Encoded[0].Length;
                _pending.Readings.RemoveAt(0);
                _pending.Encoded.RemoveAt(0);
                _count--;
                UnreportedDropped++;
                DroppedTotal++;
                _stateDirty = true;
            }
            return true;
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
                File.Delete(BatchPath(b.Name));
        }

        /// <summary>Count readings dropped outside MakeRoom (a batch the collector refused).</summary>
        public void CountDropped(int readings)
        {
            UnreportedDropped += readings;
            DroppedTotal += readings;
            _stateDirty = true;
        }

        // -- the file-backed form: one file per sealed batch, written to a temporary name and
        // renamed, so a crash leaves either the old or the new file, never half of one.

        private string BatchPath(string name)
        {
            return Path.Combine(_dir, name + ".batch");
        }

        /// <summary>Write pending counter changes (dropped counts) to the queue directory.</summary>
        public void Save()
        {
            if (_stateDirty)
                SaveState();
        }

        private void SaveState()
        {
            _stateDirty = false;
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
                WriteAtomically(BatchPath(b.Name), ms.ToArray());
            }
        }

        private static QueuedBatch Load(string path)
        {
            var name = Path.GetFileNameWithoutExtension(path);
            using (var r = new BinaryReader(File.OpenRead(path)))
            {
                var magic = r.ReadBytes(4);
                if (magic.Length != 4 || magic[0] != Magic[0] || magic[1] != Magic[1] || magic[2] != Magic[2] || magic[3] != Magic[3])
                    throw new InvalidDataException(path + ": not a queued batch");
                var b = new QueuedBatch { Name = name, Seq = r.ReadInt64() };
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
