// What a caller configures and what it gets back: client options, per-batch results with the
// collector's per-reading rejects, counters, and the exceptions the client raises.
using System;
using System.Collections.Generic;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace SensorTelemetry
{
    public sealed class TelemetryClientOptions
    {
        /// <summary>Collector host name or address.</summary>
        public string Host = "127.0.0.1";
        /// <summary>Collector ingest port.</summary>
        public int Port = 7878;
        public string DeviceId = "";
        public string Token = "";
        /// <summary>Software name and version sent in HELLO (for the collector's logs).</summary>
        public string Agent = "telemetry-csharp";
        public string AgentVersion = TelemetryClient.Version;

        /// <summary>Wrap the connection in TLS (SslStream).</summary>
        public bool UseTls;
        /// <summary>Name the server certificate must carry; default: <see cref="Host"/>.</summary>
        public string TlsServerName;
        /// <summary>
        /// Server certificate check; default: the system's trust store. For a private CA use
        /// <c>TlsTrust.FromCaFile("ca.pem")</c>.
        /// </summary>
        public RemoteCertificateValidationCallback TlsCertificateValidation;
        /// <summary>Client certificates for mutual TLS (with their private keys, e.g. from a PKCS#12 file).</summary>
        public X509CertificateCollection TlsClientCertificates;
        public SslProtocols TlsProtocols = SslProtocols.Tls12;

        /// <summary>Readings per BATCH (the collector's WELCOME limit applies too).</summary>
        public int MaxBatchReadings = 1000;
        /// <summary>How long readings may wait for more to fill their batch.</summary>
        public TimeSpan BatchDelay = TimeSpan.FromMilliseconds(50);
        /// <summary>Readings held until ACKed; when full the oldest unsent batch is dropped (and counted).</summary>
        public int MaxQueuedReadings = 100000;
        /// <summary>
        /// A directory for the file-backed queue (batches, seq counter, stream id survive a
        /// restart); null keeps the queue in memory with a new stream id per client instance.
        /// </summary>
        public string QueueDirectory;

        public TimeSpan ConnectTimeout = TimeSpan.FromSeconds(5);
        /// <summary>WELCOME must arrive this soon after HELLO.</summary>
        public TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);
        /// <summary>First reconnect delay; doubles per failed attempt up to <see cref="MaxBackoff"/>, jittered.</summary>
        public TimeSpan InitialBackoff = TimeSpan.FromMilliseconds(100);
        public TimeSpan MaxBackoff = TimeSpan.FromSeconds(10);
        /// <summary>Heartbeat period; the collector's WELCOME value is used when shorter.</summary>
        public TimeSpan Heartbeat = TimeSpan.FromSeconds(15);

        /// <summary>Diagnostics (connects, disconnects, dropped batches); null: silent.</summary>
        public Action<string> Log;
    }

    public enum BatchOutcome
    {
        /// <summary>The collector committed the batch and sent ACK (see the counts and rejects).</summary>
        Acknowledged,
        /// <summary>The batch was given up (see <see cref="BatchResult.DropReason"/>); its readings count as dropped.</summary>
        Dropped,
    }

    /// <summary>A reading the collector refused, with the reason from its ACK.</summary>
    public sealed class RejectedReading
    {
        /// <summary>0-based index of the reading in its batch.</summary>
        public int Index;
        public Reading Reading;
        /// <summary>Reject code (docs/protocol.md §6), e.g. out_of_range.</summary>
        public string Code;
        /// <summary>Field path, e.g. value, value.lat, tags.site; empty for the whole reading.</summary>
        public string Path;
        public string Message;

        public override string ToString()
        {
            return Code + " at " + (Path.Length == 0 ? "(reading)" : Path) + ": " + Message + " [" + Reading + "]";
        }
    }

    public sealed class BatchResult
    {
        public BatchOutcome Outcome;
        public long Seq;
        /// <summary>Readings in the batch.</summary>
        public int Count;
        public long Accepted;
        /// <summary>Valid readings the collector already held (a resend).</summary>
        public long Duplicate;
        public IList<RejectedReading> Rejects = new RejectedReading[0];
        /// <summary>For <see cref="BatchOutcome.Dropped"/>: queue_full, or the collector's ERROR code and message.</summary>
        public string DropReason = "";
    }

    /// <summary>Counters since the client was created.</summary>
    public sealed class ClientStats
    {
        public long Accepted;
        public long Duplicate;
        public long Rejected;
        /// <summary>Readings given up: queue full, or a batch the collector could never accept.</summary>
        public long Dropped;
        public long BatchesAcknowledged;
        public long BatchesSent;
        /// <summary>Seq of the last BATCH sent (0: none yet).</summary>
        public long LastSeqSent;
        public long Retries;
        /// <summary>Successful handshakes after the first one.</summary>
        public long Reconnects;
        /// <summary>Readings waiting for an ACK (pending and queued).</summary>
        public long Queued;
        public bool Connected;
        public string LastError = "";
    }

    /// <summary>Base of the client's fatal errors: the client stops and every wait rethrows it.</summary>
    public class TelemetryException : Exception
    {
        public TelemetryException(string message) : base(message) { }

        public TelemetryException(string message, Exception inner) : base(message, inner) { }
    }

    /// <summary>The collector refused the credentials (ERROR auth_failed): unknown device, wrong token or revoked.</summary>
    public sealed class AuthenticationFailedException : TelemetryException
    {
        public AuthenticationFailedException(string message) : base(message) { }
    }

    /// <summary>The collector refused the session for good (e.g. unsupported_version).</summary>
    public sealed class SessionRefusedException : TelemetryException
    {
        public readonly string Code;

        public SessionRefusedException(string code, string message) : base(code + ": " + message)
        {
            Code = code;
        }
    }
}
