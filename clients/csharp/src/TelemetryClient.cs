// The client: readings in, batches out, one batch in flight, ACKs and rejects back to the
// caller. A background loop owns the connection: connect (TLS optional), HELLO with the stream
// id, WELCOME, then send the queue head, answer PINGs, ping when quiet, follow RETRY, drop a
// batch an ERROR names, and on any break reconnect with jittered exponential backoff and send
// the unacknowledged batch again with its seq (docs/protocol.md §9, protocol v1.1 §1-§7).
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace SensorTelemetry
{
    public sealed class TelemetryClient : IDisposable
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

        public BatchResult Send(IEnumerable<Reading> readings, TimeSpan timeout)
        {
            var t = SendAsync(readings);
            if (!t.Wait(timeout))
                throw new TimeoutException("no ACK within " + timeout);
            return t.Result;
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
                left = _queue.Snapshot();
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

        // ---- the connection loop

        private async Task RunAsync()
        {
            var backoff = _o.InitialBackoff;
            while (true)
            {
                lock (_lock)
                {
                    if (_closing)
                        return;
                }
                try
                {
                    await SessionAsync().ConfigureAwait(false);
                    backoff = _o.InitialBackoff;
                }
                catch (TelemetryException e)
                {
                    Fault(e);
                    return;
                }
                catch (Exception e) when (e is IOException || e is SocketException || e is ProtocolException
                    || e is TimeoutException || e is ObjectDisposedException
                    || e is System.Security.Authentication.AuthenticationException)
                {
                    lock (_lock)
                        _stats.LastError = e.Message;
                    Log("disconnected: " + e.Message);
                }
                catch (Exception e)
                {
                    // A bug in this client: surface it to the caller instead of looping on it.
                    Fault(new TelemetryException("client loop failed: " + e.Message, e));
                    return;
                }
                finally
                {
                    lock (_lock)
                    {
                        _stats.Connected = false;
                        if (_stream != null)
                            _stream.Dispose();
                        _stream = null;
                    }
                }
                lock (_lock)
                {
                    if (_closing)
                        return;
                }
                // Jittered exponential backoff: a random delay in [backoff/2, backoff].
                double ms;
                lock (_random)
                    ms = backoff.TotalMilliseconds * (0.5 + 0.5 * _random.NextDouble());
                try
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(ms), _stop.Token).ConfigureAwait(false);
                }
                catch (TaskCanceledException)
                {
                    return;
                }
                backoff = TimeSpan.FromMilliseconds(Math.Min(_o.MaxBackoff.TotalMilliseconds, backoff.TotalMilliseconds * 2));
            }
        }

        private void Fault(TelemetryException e)
        {
            List<QueuedBatch> batches;
            lock (_lock)
            {
                _fatal = e;
                _stats.LastError = e.Message;
                batches = _queue.Snapshot();
            }
            Log("stopped: " + e.Message);
            _firstWelcome.TrySetException(e);
            Fail(batches, e);
        }

        private async Task<Stream> OpenAsync()
        {
            var addresses = await Dns.GetHostAddressesAsync(_o.Host).ConfigureAwait(false);
            if (addresses.Length == 0)
                throw new IOException("no address for " + _o.Host);
            var tcp = new TcpClient(addresses[0].AddressFamily);
            try
            {
                var connect = tcp.ConnectAsync(addresses[0], _o.Port);
                if (await Task.WhenAny(connect, Task.Delay(_o.ConnectTimeout)).ConfigureAwait(false) != connect)
                {
                    Observe(connect);
                    throw new TimeoutException("connect timed out");
                }
                await connect.ConfigureAwait(false);
                tcp.NoDelay = true;
                Stream stream = tcp.GetStream();
                if (_o.UseTls)
                {
                    var ssl = new SslStream(stream, false, _o.TlsCertificateValidation);
                    stream = ssl;
                    var auth = ssl.AuthenticateAsClientAsync(_o.TlsServerName ?? _o.Host, _o.TlsClientCertificates, _o.TlsProtocols, false);
                    if (await Task.WhenAny(auth, Task.Delay(_o.ConnectTimeout)).ConfigureAwait(false) != auth)
                    {
                        Observe(auth);
                        throw new TimeoutException("TLS handshake timed out");
                    }
                    await auth.ConfigureAwait(false);
                }
                return stream;
            }
            catch
            {
                tcp.Close();
                throw;
            }
        }

        private static async Task WriteAsync(Stream s, byte[] frame)
        {
            await s.WriteAsync(frame, 0, frame.Length).ConfigureAwait(false);
            await s.FlushAsync().ConfigureAwait(false);
        }

        private async Task SessionAsync()
        {
            var stream = await OpenAsync().ConfigureAwait(false);
            long reportedDropped;
            lock (_lock)
            {
                _stream = stream;
                reportedDropped = _queue.UnreportedDropped;
                if (_closing)
                    return;
            }
            await WriteAsync(stream, Wire.EncodeFrame(new Hello
            {
                DeviceId = _o.DeviceId,
                Token = _o.Token,
                Agent = _o.Agent,
                AgentVersion = _o.AgentVersion,
                Dropped = reportedDropped,
                Stream = _queue.StreamId,
            })).ConfigureAwait(false);

            var first = Framing.ReadFrameAsync(stream, Wire.DefaultMaxFrameBytes);
            if (await Task.WhenAny(first, Task.Delay(_o.HandshakeTimeout)).ConfigureAwait(false) != first)
            {
                Observe(first);
                throw new TimeoutException("no WELCOME within " + _o.HandshakeTimeout);
            }
            var body = await first.ConfigureAwait(false);
            if (body == null)
                throw new IOException("the collector closed the connection before WELCOME");
            var msg = Wire.Decode(body);
            var err = msg as ErrorMessage;
            if (err != null)
            {
                if (err.Code == ErrorCodes.AuthFailed)
                    throw new AuthenticationFailedException("collector refused device '" + _o.DeviceId + "': " + err.Message);
                if (err.Code == ErrorCodes.UnsupportedVersion)
                    throw new SessionRefusedException(err.Code, err.Message);
                throw new ProtocolException(err.Code, err.Message, true);
            }
            if (msg is Bye)
                throw new IOException("the collector said BYE: " + ((Bye)msg).Reason);
            var welcome = msg as Welcome;
            if (welcome == null)
                throw new ProtocolException(ErrorCodes.UnexpectedMessage, msg.Type + " before WELCOME", true);

            var heartbeatMs = (long)Math.Min(_o.Heartbeat.TotalMilliseconds, welcome.HeartbeatMs);
            if (heartbeatMs <= 0)
                heartbeatMs = Wire.DefaultHeartbeatMs;
            lock (_lock)
            {
                _maxBatchReadings = (int)Math.Min(_o.MaxBatchReadings, welcome.MaxBatchReadings);
                _maxBodyBytes = (int)Math.Min(int.MaxValue, welcome.MaxFrameBytes) - BatchOverheadBytes;
                _queue.OnWelcome(welcome.LastSeq);
                _queue.DroppedReported(reportedDropped);
                _stats.Connected = true;
                if (_everConnected)
                    _stats.Reconnects++;
                _everConnected = true;
            }
            Log("connected: last_seq=" + welcome.LastSeq + " minor=" + welcome.Minor + " stream=" + _queue.StreamId);
            _firstWelcome.TrySetResult(true);
            await ReadyAsync(stream, welcome, heartbeatMs).ConfigureAwait(false);
        }

        private async Task ReadyAsync(Stream stream, Welcome welcome, long heartbeatMs)
        {
            var readTask = Framing.ReadFrameAsync(stream, Wire.DefaultMaxFrameBytes);
            Task wakeTask = null;
            QueuedBatch inflight = null;
            var inflightSent = false;
            long retryAtMs = 0;
            var lastSentMs = Now;
            var lastRecvMs = Now;
            var badFrames = 0;
            long nonce = 0;
            var deadAfterMs = 2 * heartbeatMs + 1000;
            try
            {
                while (true)
                {
                    byte[] toSend = null;
                    long wakeAtMs;
                    var now = Now;
                    lock (_lock)
                    {
                        if (_closing)
                            break;
                        if (_queue.HasPending && now - _queue.PendingSinceMs >= _o.BatchDelay.TotalMilliseconds)
                            _queue.Seal();
                        if (inflight == null && _queue.Head != null)
                        {
                            _queue.SplitHead(_maxBatchReadings, _maxBodyBytes);
                            inflight = _queue.Head;
                            inflightSent = false;
                            _queue.AssignSeq(inflight);
                        }
                        if (inflight != null && !inflightSent && now >= retryAtMs)
                            toSend = Wire.EncodeBatchFrame(inflight.Seq, inflight.Encoded);
                        wakeAtMs = Math.Min(lastSentMs + heartbeatMs, lastRecvMs + deadAfterMs);
                        if (_queue.HasPending)
                            wakeAtMs = Math.Min(wakeAtMs, _queue.PendingSinceMs + (long)_o.BatchDelay.TotalMilliseconds);
                        if (inflight != null && !inflightSent)
                            wakeAtMs = Math.Min(wakeAtMs, retryAtMs);
                    }
                    if (toSend != null)
                    {
                        await WriteAsync(stream, toSend).ConfigureAwait(false);
                        inflightSent = true;
                        lastSentMs = Now;
                        lock (_lock)
                        {
                            _stats.BatchesSent++;
                            _stats.LastSeqSent = inflight.Seq;
                        }
                        continue;
                    }
                    if (now - lastRecvMs >= deadAfterMs)
                        throw new TimeoutException("nothing received for " + deadAfterMs + " ms");
                    if (now - lastSentMs >= heartbeatMs)
                    {
                        await WriteAsync(stream, Wire.EncodeFrame(new Ping { Nonce = ++nonce })).ConfigureAwait(false);
                        lastSentMs = Now;
                        continue;
                    }

                    if (wakeTask == null || wakeTask.IsCompleted)
                        wakeTask = _wake.WaitAsync();
                    using (var timer = new CancellationTokenSource())
                    {
                        var delay = Task.Delay((int)Math.Max(1, wakeAtMs - now), timer.Token);
                        await Task.WhenAny(readTask, wakeTask, delay).ConfigureAwait(false);
                        timer.Cancel();
                    }
                    if (!readTask.IsCompleted)
                        continue;

                    byte[] body;
                    Message msg;
                    try
                    {
                        body = await readTask.ConfigureAwait(false);
                        readTask = null;
                        if (body == null)
                            throw new IOException("the collector closed the connection");
                        lastRecvMs = Now;
                        readTask = Framing.ReadFrameAsync(stream, Wire.DefaultMaxFrameBytes);
                        msg = Wire.Decode(body);
                    }
                    catch (ProtocolException e) when (!e.Fatal)
                    {
                        if (readTask == null || readTask.IsFaulted)
                            readTask = Framing.ReadFrameAsync(stream, Wire.DefaultMaxFrameBytes);
                        badFrames = await BadFrameAsync(stream, badFrames, e.Code, e.Message).ConfigureAwait(false);
                        continue;
                    }
                    catch (ProtocolException e)
                    {
                        if (e.Code == ErrorCodes.FrameTooLarge)
                            await TrySendAsync(stream, new ErrorMessage { Code = e.Code, Message = e.Message, Fatal = true }).ConfigureAwait(false);
                        throw;
                    }

                    switch (msg.Type)
                    {
                        case MessageType.Ack:
                            {
                                var ack = (Ack)msg;
                                if (inflight != null && inflightSent && ack.Seq == inflight.Seq)
                                {
                                    Complete(inflight, ack);
                                    inflight = null;
                                    retryAtMs = 0;
                                }
                                else
                                    Log("ignored ACK for seq " + ack.Seq);
                                break;
                            }
                        case MessageType.Retry:
                            {
                                var retry = (Retry)msg;
                                if (inflight != null && inflightSent && retry.Seq == inflight.Seq)
                                {
                                    inflightSent = false;
                                    retryAtMs = Now + retry.RetryAfterMs;
                                    lock (_lock)
                                        _stats.Retries++;
                                }
                                break;
                            }
                        case MessageType.Ping:
                            await WriteAsync(stream, Wire.EncodeFrame(new Pong { Nonce = ((Ping)msg).Nonce })).ConfigureAwait(false);
                            lastSentMs = Now;
                            break;
                        case MessageType.Pong:
                            break;
                        case MessageType.Error:
                            {
                                var err = (ErrorMessage)msg;
                                if (err.Code == ErrorCodes.AuthFailed)
                                    throw new AuthenticationFailedException("collector refused device '" + _o.DeviceId + "': " + err.Message);
                                if (err.Fatal)
                                    throw new ProtocolException(err.Code, err.Message, true);
                                // v1.1 names the batch; a v1.0 collector names none, but with one batch
                                // in flight a bad_message/malformed_frame can only be about that batch.
                                var aboutInflight = inflight != null && inflightSent && (err.Seq == inflight.Seq
                                    || (err.Seq == 0 && welcome.Minor == 0
                                        && (err.Code == ErrorCodes.BadMessage || err.Code == ErrorCodes.MalformedFrame)));
                                if (aboutInflight)
                                {
                                    DropBatch(inflight, err.Code + ": " + err.Message);
                                    inflight = null;
                                    retryAtMs = 0;
                                }
                                else
                                    Log("collector error: " + err.Code + ": " + err.Message);
                                break;
                            }
                        case MessageType.Bye:
                            Log("collector said BYE: " + ((Bye)msg).Reason);
                            return;
                        default:
                            badFrames = await BadFrameAsync(stream, badFrames, ErrorCodes.UnexpectedMessage,
                                msg.Type + " is not sent by a collector in ready").ConfigureAwait(false);
                            break;
                    }
                }
                await TrySendAsync(stream, new Bye { Reason = "" }).ConfigureAwait(false);
            }
            finally
            {
                if (readTask != null)
                    Observe(readTask);
            }
        }

        private static void Observe(Task t)
        {
            t.ContinueWith(x => { var ignored = x.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
        }

        private async Task<int> BadFrameAsync(Stream stream, int badFrames, string code, string message)
        {
            badFrames++;
            if (badFrames > BadFrameBudget)
            {
                await TrySendAsync(stream, new ErrorMessage { Code = ErrorCodes.TooManyBadFrames, Message = "bad-frame budget spent", Fatal = true }).ConfigureAwait(false);
                throw new ProtocolException(ErrorCodes.TooManyBadFrames, "the collector sent too many bad frames", true);
            }
            Log("bad frame from the collector: " + code + ": " + message);
            await WriteAsync(stream, Wire.EncodeFrame(new ErrorMessage { Code = code, Message = message, Fatal = false })).ConfigureAwait(false);
            return badFrames;
        }

        private static async Task TrySendAsync(Stream stream, Message m)
        {
            try
            {
                await WriteAsync(stream, Wire.EncodeFrame(m)).ConfigureAwait(false);
            }
            catch (IOException)
            {
                // The connection is going away anyway.
            }
            catch (ObjectDisposedException)
            {
                // Likewise.
            }
        }

        private void Complete(QueuedBatch b, Ack ack)
        {
            var rejects = new List<RejectedReading>(ack.Rejects.Count);
            foreach (var r in ack.Rejects)
            {
                var i = (int)Math.Min(int.MaxValue, r.Index);
                rejects.Add(new RejectedReading
                {
                    Index = i,
                    Reading = i < b.Readings.Count ? b.Readings[i] : null,
                    Code = r.Code,
                    Path = r.Path,
                    Message = r.Message,
                });
            }
            var result = new BatchResult
            {
                Outcome = BatchOutcome.Acknowledged,
                Seq = b.Seq,
                Count = b.Readings.Count,
                Accepted = ack.Accepted,
                Duplicate = ack.Duplicate,
                Rejects = rejects.AsReadOnly(),
            };
            lock (_lock)
            {
                _queue.Remove(b);
                _stats.Accepted += ack.Accepted;
                _stats.Duplicate += ack.Duplicate;
                _stats.Rejected += rejects.Count;
                _stats.BatchesAcknowledged++;
            }
            Publish(b, result);
        }

        private void DropBatch(QueuedBatch b, string reason)
        {
            lock (_lock)
            {
                _queue.Remove(b);
                _queue.CountDropped(b.Readings.Count);
            }
            Log("dropped batch seq " + b.Seq + " (" + b.Readings.Count + " readings): " + reason);
            Finish(new List<QueuedBatch> { b }, reason);
        }

        // Batches dropped (queue full or refused): counted, completed, announced.
        private void Finish(List<QueuedBatch> dropped, string reason)
        {
            foreach (var b in dropped)
            {
                Publish(b, new BatchResult
                {
                    Outcome = BatchOutcome.Dropped,
                    Seq = b.Seq,
                    Count = b.Readings.Count,
                    DropReason = reason,
                });
            }
        }

        private void Publish(QueuedBatch b, BatchResult result)
        {
            b.Completion.TrySetResult(result);
            if (b.Group != null)
            {
                BatchResult whole;
                lock (_lock)
                    whole = b.Group.Add(b, result);
                if (whole != null)
                    b.Group.Completion.TrySetResult(whole);
            }
            var handler = BatchCompleted;
            if (handler != null)
                handler(this, result);
        }

        private static void Fail(IEnumerable<QueuedBatch> batches, Exception e)
        {
            foreach (var b in batches)
            {
                b.Completion.TrySetException(e);
                if (b.Group != null)
                    b.Group.Completion.TrySetException(e);
            }
        }
    }
}
