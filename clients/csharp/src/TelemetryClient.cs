// The client's public face: readings in (typed Add* calls or whole batches), results out (a
// task per batch, an event, counters), waiting (connect, flush) and closing. A background
// loop (Connection.cs) owns the connection; both share the queue under one lock.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using System.Threading.Tasks;

namespace SensorTelemetry
{
    public sealed partial class TelemetryClient : IDisposable
    {
        public const string Version = "0.1.0";

        // Frame overhead beside the readings: array(3) + type + seq (≤ 9) + array32 header.
        private const int BatchOverheadBytes = 16;
        // The protocol's bad-frame budget (§8): past it the connection is given up.
        private const int BadFrameBudget = 16;

        private readonly TelemetryClientOptions _o;
        private readonly object _lock = new object();
        private readonly BatchQueue _queue;
        private readonly ClientStats _stats = new ClientStats();
        private readonly SemaphoreSlim _wake = new SemaphoreSlim(0, 1);
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly Random _random = new Random();
        private readonly TaskCompletionSource<bool> _firstWelcome =
            new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly CancellationTokenSource _stop = new CancellationTokenSource();
        private Task _loop;
        private Exception _fatal;
        private bool _closing;
        private Stream _stream;
        private int _maxBatchReadings;
        private int _maxBodyBytes = Wire.DefaultMaxFrameBytes - BatchOverheadBytes;
        private bool _everConnected;

        /// <summary>Raised (on the client's I/O loop: keep handlers short) when a batch is acknowledged or dropped.</summary>
        public event EventHandler<BatchResult> BatchCompleted;

        public TelemetryClient(TelemetryClientOptions options)
        {
            if (options == null)
                throw new ArgumentNullException("options");
            if (string.IsNullOrEmpty(options.DeviceId))
                throw new ArgumentException("DeviceId is required");
            if (options.MaxBatchReadings < 1 || options.MaxQueuedReadings < options.MaxBatchReadings)
                throw new ArgumentException("need 1 <= MaxBatchReadings <= MaxQueuedReadings");
            _o = options;
            _maxBatchReadings = options.MaxBatchReadings;
            _queue = new BatchQueue(options.MaxQueuedReadings, options.QueueDirectory);
        }

        /// <summary>The v1.1 stream id sent in HELLO (kept in the queue directory when there is one).</summary>
        public string StreamId
        {
            get { return _queue.StreamId; }
        }

        /// <summary>A snapshot of the counters.</summary>
        public ClientStats Stats
        {
            get
            {
                lock (_lock)
                {
                    return new ClientStats
                    {
                        Accepted = _stats.Accepted,
                        Duplicate = _stats.Duplicate,
                        Rejected = _stats.Rejected,
                        Dropped = _queue.DroppedTotal,
                        BatchesAcknowledged = _stats.BatchesAcknowledged,
                        BatchesSent = _stats.BatchesSent,
                        LastSeqSent = _stats.LastSeqSent,
                        Retries = _stats.Retries,
                        Reconnects = _stats.Reconnects,
                        Queued = _queue.Count,
                        Connected = _stats.Connected,
                        LastError = _stats.LastError,
                    };
                }
            }
        }

        // ---- adding readings

        public void AddNumber(string sensor, string kind, long timestampNs, double value, string unit = null,
            IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            Add(Reading.Number(sensor, kind, timestampNs, value, unit, tags));
        }

        public void AddInteger(string sensor, string kind, long timestampNs, long value, string unit = null,
            IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            Add(Reading.Integer(sensor, kind, timestampNs, value, unit, tags));
        }

        public void AddBool(string sensor, string kind, long timestampNs, bool value, string unit = null,
            IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            Add(Reading.Bool(sensor, kind, timestampNs, value, unit, tags));
        }

        public void AddText(string sensor, string kind, long timestampNs, string value, string unit = null,
            IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            Add(Reading.Text(sensor, kind, timestampNs, value, unit, tags));
        }

        public void AddObject(string sensor, string kind, long timestampNs, ObjectValue value, string unit = null,
            IEnumerable<KeyValuePair<string, string>> tags = null)
        {
            Add(Reading.Object(sensor, kind, timestampNs, value, unit, tags));
        }

        /// <summary>
        /// Queue one reading; it is sent in the next batch (when the batch is full, after
        /// <see cref="TelemetryClientOptions.BatchDelay"/>, or on Flush). Starts the client.
        /// </summary>
        public void Add(Reading reading)
        {
            var encoded = reading.Encode();
            var dropped = new List<QueuedBatch>();
            bool news;
            lock (_lock)
            {
                ThrowIfStopped();
                news = _queue.Add(reading, encoded, Now, _maxBatchReadings, _maxBodyBytes, dropped);
            }
            Finish(dropped, "queue_full");
            EnsureStarted();
            if (news)
                Wake();
        }

        /// <summary>Send readings as one batch of their own; completes with its ACK (or drop).</summary>
        public Task<BatchResult> SendAsync(IEnumerable<Reading> readings)
        {
            var list = new List<Reading>(readings);
            if (list.Count == 0 || list.Count > _o.MaxBatchReadings)
                throw new ArgumentException("a batch holds 1 .. MaxBatchReadings readings");
            var encoded = list.ConvertAll(r => r.Encode());
            var dropped = new List<QueuedBatch>();
            QueuedBatch b;
            lock (_lock)
            {
                ThrowIfStopped();
                b = _queue.AddBatch(list, encoded, dropped);
            }
            Finish(dropped, "queue_full");
            EnsureStarted();
            Wake();
            return b.Completion.Task;
        }

        /// <exception cref="TimeoutException">no ACK in time (the batch stays queued)</exception>
        public BatchResult Send(IEnumerable<Reading> readings, TimeSpan timeout)
        {
            var t = SendAsync(readings);
            if (Task.WhenAny(t, Task.Delay(timeout)).GetAwaiter().GetResult() != t)
                throw new TimeoutException("no ACK within " + timeout);
            return t.GetAwaiter().GetResult();
        }

        // ---- waiting

        /// <summary>Start the client and wait for the first WELCOME.</summary>
        /// <exception cref="AuthenticationFailedException">the collector refused the token</exception>
        public async Task ConnectAsync(CancellationToken cancel = default(CancellationToken))
        {
            EnsureStarted();
            var cancelled = new TaskCompletionSource<bool>();
            using (cancel.Register(() => cancelled.TrySetCanceled()))
            {
                await Task.WhenAny(_firstWelcome.Task, cancelled.Task).ConfigureAwait(false);
            }
            cancel.ThrowIfCancellationRequested();
            await _firstWelcome.Task.ConfigureAwait(false);
        }

        /// <exception cref="TimeoutException">no WELCOME in time (the client keeps trying)</exception>
        public void Connect(TimeSpan timeout)
        {
            using (var cts = new CancellationTokenSource(timeout))
            {
                try
                {
                    Block(ConnectAsync(cts.Token));
                }
                catch (OperationCanceledException)
                {
                    var last = Stats.LastError;
                    throw new TimeoutException("no connection to " + _o.Host + ":" + _o.Port + " within " + timeout
                        + (last.Length > 0 ? " (last error: " + last + ")" : ""));
                }
            }
        }

        /// <summary>Send what is being gathered now and wait until everything queued so far is acknowledged or dropped.</summary>
        public async Task FlushAsync(CancellationToken cancel = default(CancellationToken))
        {
            List<QueuedBatch> batches;
            lock (_lock)
            {
                ThrowIfStopped();
                _queue.Seal();
                batches = _queue.Snapshot();
            }
            EnsureStarted();
            Wake();
            var all = Task.WhenAll(batches.ConvertAll(b => (Task)b.Completion.Task));
            var cancelled = new TaskCompletionSource<bool>();
            using (cancel.Register(() => cancelled.TrySetCanceled()))
            {
                await Task.WhenAny(all, cancelled.Task).ConfigureAwait(false);
            }
            cancel.ThrowIfCancellationRequested();
            await all.ConfigureAwait(false);
        }

        /// <exception cref="TimeoutException">not everything was acknowledged in time</exception>
        public void Flush(TimeSpan timeout)
        {
            using (var cts = new CancellationTokenSource(timeout))
            {
                try
                {
                    Block(FlushAsync(cts.Token));
                }
                catch (OperationCanceledException)
                {
                    throw new TimeoutException("not everything was acknowledged within " + timeout);
                }
            }
        }

        /// <summary>Flush (waiting at most <paramref name="drainTimeout"/>), say BYE and stop.</summary>
        public async Task CloseAsync(TimeSpan drainTimeout)
        {
            if (_loop != null && _fatal == null)
            {
                using (var cts = new CancellationTokenSource(drainTimeout))
                {
                    try
                    {
                        await FlushAsync(cts.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        // Whatever is still unacknowledged stays in the file-backed queue, if any.
                    }
                    catch (TelemetryException)
                    {
                        // The client stopped while draining; Stats.LastError says why. Closing goes on.
                    }
                }
            }
            lock (_lock)
            {
                _closing = true;
                if (!_stop.IsCancellationRequested)
                    _stop.Cancel(); // ends a backoff wait; a live session says BYE first
            }
            Wake();
            if (_loop != null)
                await Task.WhenAny(_loop, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
            StopNow();
        }

        public void Close(TimeSpan drainTimeout)
        {
            Block(CloseAsync(drainTimeout));
        }

        /// <summary>Stop at once: no drain, no BYE. Unacknowledged batches stay in the file-backed queue, if any.</summary>
        public void Dispose()
        {
            StopNow();
        }

        private void StopNow()
        {
            lock (_lock)
            {
                _closing = true;
                if (!_stop.IsCancellationRequested)
                    _stop.Cancel();
                if (_stream != null)
                    _stream.Dispose(); // unblocks a pending read
            }
            Wake();
            if (_loop != null)
                _loop.Wait(TimeSpan.FromSeconds(5));
            var closed = new ObjectDisposedException("TelemetryClient", "the client was closed");
            List<QueuedBatch> left;
            lock (_lock)
            {
                left = _queue.Snapshot();
                _queue.Save();
            }
            Fail(left, closed);
            _firstWelcome.TrySetException(closed);
        }

        private static void Block(Task t)
        {
            try
            {
                t.GetAwaiter().GetResult();
            }
            catch (TaskCanceledException)
            {
                throw new OperationCanceledException();
            }
        }

        private void ThrowIfStopped()
        {
            if (_fatal != null)
                throw _fatal;
            if (_closing)
                throw new ObjectDisposedException("TelemetryClient", "the client was closed");
        }

        private void EnsureStarted()
        {
            lock (_lock)
            {
                if (_loop != null || _closing)
                    return;
                _loop = Task.Run(() => RunAsync());
            }
        }

        private void Wake()
        {
            try
            {
                if (_wake.CurrentCount == 0)
                    _wake.Release();
            }
            catch (SemaphoreFullException)
            {
                // Already signalled: one wake-up covers every reason.
            }
        }

        private long Now
        {
            get { return _clock.ElapsedMilliseconds; }
        }

        private void Log(string message)
        {
            var log = _o.Log;
            if (log != null)
                log(message);
        }
    }
}
