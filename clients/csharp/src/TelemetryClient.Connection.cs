// The connection loop of TelemetryClient: connect (TLS optional), HELLO with the stream id,
// WELCOME, then one batch in flight: send the queue head, follow ACK / RETRY / ERROR, answer
// PINGs, ping when quiet, give up a silent link; on any break reconnect with jittered
// exponential backoff and send the unacknowledged batch again (docs/protocol.md §9, v1.1).
// The public face (adding readings, waiting, closing) is in TelemetryClient.cs.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Threading;
using System.Threading.Tasks;

namespace SensorTelemetry
{
    public sealed partial class TelemetryClient
    {
        private TcpClient _tcp;
        private bool _welcomed;

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
                _welcomed = false;
                try
                {
                    await SessionAsync().ConfigureAwait(false);
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
                        if (_tcp != null)
                            _tcp.Close();
                        _tcp = null;
                    }
                }
                // A session that got as far as WELCOME starts the backoff again from the bottom.
                if (_welcomed)
                    backoff = _o.InitialBackoff;
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
                lock (_lock)
                    _tcp = tcp;
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
                _maxBatchReadings = (int)Math.Max(1, Math.Min(_o.MaxBatchReadings, welcome.MaxBatchReadings));
                _maxBodyBytes = (int)Math.Max(1, Math.Min(int.MaxValue, welcome.MaxFrameBytes) - BatchOverheadBytes);
                _queue.OnWelcome(welcome.LastSeq);
                _queue.DroppedReported(reportedDropped);
                _stats.Connected = true;
                if (_everConnected)
                    _stats.Reconnects++;
                _everConnected = true;
            }
            _welcomed = true;
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
