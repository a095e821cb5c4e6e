// The C# client's test program (driven by tests/clients/test_client_csharp.py):
//   ClientTests.exe vectors <tests/vectors dir>   check every test vector; exit 0 when all pass
//   ClientTests.exe units <scratch dir>           checks that need no collector
//   ClientTests.exe send <spec.json>              send a spec's batches to the collector at
//       TELEMETRY_ADDRESS as TELEMETRY_DEVICE/TELEMETRY_TOKEN; print one JSON line per
//       BATCH answered ("batch"; the parts of a batch split to fit the collector's limits
//       each get one), one "result" line per batch given to SendAsync, and a summary line.
// A spec: {"batches": [[reading, ...], ...], "queue_dir": null | "dir", "hold": false,
//          "pause_ms": 0, "after": [[reading, ...], ...], "connect_s": 30,
//          "tls_pinned": null | "server.pem", "tls_ca": null | "ca.pem"}
// where a reading is the JSON form of tests/vectors (a JSON int is sent with AddInteger, a
// JSON float with AddNumber, ...). With "hold": true the program waits until every batch is
// sent, prints {"event": "sent", ...}, waits for a line on stdin and stops without waiting
// for ACKs (a crash stand-in: the batches stay in the file-backed queue). With "after", the
// link stays idle for pause_ms once "batches" are acknowledged, then "after" is sent.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace SensorTelemetry.Tests
{
    public static class Program
    {
        public static int Main(string[] args)
        {
            var code = Run(args);
            // Exit at once: Mono 6.8 can otherwise wait for a parked thread-pool worker to time
            // out (up to a minute) before the process ends.
            Console.Out.Flush();
            Environment.Exit(code);
            return code;
        }

        private static int Run(string[] args)
        {
            if (args.Length == 2 && args[0] == "vectors")
                return Vectors(args[1]);
            if (args.Length == 2 && args[0] == "units")
            {
                var units = new Units();
                units.Run(args[1]);
                foreach (var f in units.Failures)
                    Console.WriteLine("FAIL " + f);
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "units: {0} checks, {1} failed", units.Checked, units.Failures.Count));
                return units.Failures.Count == 0 ? 0 : 1;
            }
            if (args.Length == 2 && args[0] == "send")
                return Send(args[1]);
            Console.Error.WriteLine("usage: ClientTests.exe vectors DIR | units DIR | send SPEC.json");
            return 2;
        }

        private static int Vectors(string dir)
        {
            var checks = new VectorChecks();
            checks.Run(dir);
            foreach (var f in checks.Failures)
                Console.WriteLine("FAIL " + f);
            Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "vectors: {0} checks, {1} failed, {2} not expressible",
                checks.Checked, checks.Failures.Count, checks.Skipped));
            return checks.Failures.Count == 0 ? 0 : 1;
        }

        private static string Env(string name)
        {
            var v = Environment.GetEnvironmentVariable(name);
            if (v == null)
                throw new ArgumentException(name + " is not set");
            return v;
        }

        private static int Send(string specPath)
        {
            var spec = (JsonObject)Json.Parse(File.ReadAllText(specPath, Encoding.UTF8));
            var address = Env("TELEMETRY_ADDRESS");
            var colon = address.LastIndexOf(':');
            var options = new TelemetryClientOptions
            {
                Host = address.Substring(0, colon),
                Port = int.Parse(address.Substring(colon + 1), CultureInfo.InvariantCulture),
                DeviceId = Env("TELEMETRY_DEVICE"),
                Token = Env("TELEMETRY_TOKEN"),
                Agent = "csharp-client-tests",
                QueueDirectory = spec.Has("queue_dir") ? spec["queue_dir"] as string : null,
                InitialBackoff = TimeSpan.FromMilliseconds(50),
                MaxBackoff = TimeSpan.FromMilliseconds(500),
                Log = line => Console.Error.WriteLine("client: " + line),
            };
            if (spec.Has("tls_pinned") && spec["tls_pinned"] != null)
            {
                options.UseTls = true;
                options.TlsCertificateValidation = TlsTrust.PinnedCertificate((string)spec["tls_pinned"]);
            }
            if (spec.Has("tls_ca") && spec["tls_ca"] != null)
            {
                options.UseTls = true;
                options.TlsCertificateValidation = TlsTrust.FromCaFile((string)spec["tls_ca"]);
            }
            var hold = spec.Has("hold") && (bool)spec["hold"];
            var connect = TimeSpan.FromSeconds(spec.Has("connect_s") ? ((JsonNumber)spec["connect_s"]).Double : 30);
            var pause = spec.Has("pause_ms") ? int.Parse(((JsonNumber)spec["pause_ms"]).Text, CultureInfo.InvariantCulture) : 0;
            var batches = Batches(spec, "batches");
            var after = Batches(spec, "after");

            var client = new TelemetryClient(options);
            client.BatchCompleted += (sender, result) => Console.WriteLine(ResultLine(result));
            try
            {
                client.Connect(connect);
                var sends = new List<Task<BatchResult>>();
                foreach (var b in batches)
                    sends.Add(Observe(client.SendAsync(b)));
                if (hold)
                {
                    var deadline = Stopwatch.StartNew();
                    while (client.Stats.BatchesSent < batches.Count)
                    {
                        if (deadline.Elapsed > TimeSpan.FromSeconds(30))
                            throw new TimeoutException("batches not sent in time");
                        Thread.Sleep(10); // polling a counter with a deadline
                    }
                    Console.WriteLine("{\"event\": \"sent\", \"stream\": " + Json.Quote(client.StreamId)
                        + ", \"seq\": " + client.Stats.LastSeqSent.ToString(CultureInfo.InvariantCulture) + "}");
                    Console.Out.Flush();
                    Console.In.ReadLine();
                    client.Dispose();
                    return 0;
                }
                client.Flush(TimeSpan.FromSeconds(60));
                if (after.Count > 0)
                {
                    Thread.Sleep(pause); // the scenario: an idle link longer than the collector's idle timeout
                    foreach (var b in after)
                        sends.Add(Observe(client.SendAsync(b)));
                    client.Flush(TimeSpan.FromSeconds(60));
                }
                foreach (var t in sends)
                    Console.WriteLine(ResultLine(t.Result).Replace("\"event\": \"batch\"", "\"event\": \"result\""));
                var s = client.Stats;
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture,
                    "{{\"event\": \"done\", \"stream\": {0}, \"accepted\": {1}, \"duplicate\": {2}, \"rejected\": {3}, \"dropped\": {4}, \"reconnects\": {5}, \"retries\": {6}}}",
                    Json.Quote(client.StreamId), s.Accepted, s.Duplicate, s.Rejected, s.Dropped, s.Reconnects, s.Retries));
                client.Close(TimeSpan.FromSeconds(5));
                return 0;
            }
            catch (TimeoutException e)
            {
                Console.WriteLine("{\"event\": \"timeout\", \"message\": " + Json.Quote(e.Message) + "}");
                client.Dispose();
                return 4;
            }
            catch (TelemetryException e)
            {
                Console.WriteLine("{\"event\": \"fatal\", \"type\": " + Json.Quote(e.GetType().Name) + ", \"message\": " + Json.Quote(e.Message) + "}");
                client.Dispose();
                return 3;
            }
        }

        private static List<List<Reading>> Batches(JsonObject spec, string key)
        {
            var batches = new List<List<Reading>>();
            if (!spec.Has(key))
                return batches;
            foreach (List<object> b in (List<object>)spec[key])
            {
                var readings = new List<Reading>();
                foreach (var r in b)
                {
                    var reading = VectorChecks.ToReading(r);
                    if (reading == null)
                        throw new ArgumentException("not expressible with the typed API: " + VectorChecks.Show(r));
                    readings.Add(reading);
                }
                batches.Add(readings);
            }
            return batches;
        }

        private static Task<BatchResult> Observe(Task<BatchResult> t)
        {
            t.ContinueWith(x => { var ignored = x.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
            return t;
        }

        private static string ResultLine(BatchResult r)
        {
            var rejects = new List<string>();
            foreach (var x in r.Rejects)
                rejects.Add("[" + x.Index + ", " + Json.Quote(x.Code) + ", " + Json.Quote(x.Path) + ", " + Json.Quote(x.Message)
                    + ", " + Json.Quote(x.Reading == null ? "" : x.Reading.Sensor) + "]");
            return string.Format(CultureInfo.InvariantCulture,
                "{{\"event\": \"batch\", \"outcome\": {0}, \"seq\": {1}, \"count\": {2}, \"accepted\": {3}, \"duplicate\": {4}, \"rejects\": [{5}], \"drop_reason\": {6}}}",
                Json.Quote(r.Outcome.ToString()), r.Seq, r.Count, r.Accepted, r.Duplicate, string.Join(", ", rejects), Json.Quote(r.DropReason));
        }
    }
}
