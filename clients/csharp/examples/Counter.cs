// Sends TELEMETRY_COUNT readings of sensor example/counter (kind counter, values 1..N, one per
// millisecond of device time starting now) to the collector at TELEMETRY_ADDRESS as device
// TELEMETRY_DEVICE with TELEMETRY_TOKEN, waits until every one is acknowledged and prints one
// summary line. Exit 0 on success; 1 with one line on stderr on a fatal error.
using System;
using System.Globalization;
using SensorTelemetry;

public static class Counter
{
    public static int Main()
    {
        var code = Run();
        // Exit at once: Mono 6.8 can otherwise wait for a parked thread-pool worker to time out
        // (up to a minute) before the process ends.
        Console.Out.Flush();
        Environment.Exit(code);
        return code;
    }

    private static int Run()
    {
        try
        {
            var address = Env("TELEMETRY_ADDRESS");
            var colon = address.LastIndexOf(':');
            if (colon <= 0)
                throw new ArgumentException("TELEMETRY_ADDRESS must be host:port, got '" + address + "'");
            var host = address.Substring(0, colon).Trim('[', ']');
            var port = int.Parse(address.Substring(colon + 1), CultureInfo.InvariantCulture);
            var count = int.Parse(Env("TELEMETRY_COUNT"), CultureInfo.InvariantCulture);
            if (count < 1)
                throw new ArgumentException("TELEMETRY_COUNT must be at least 1");
            var options = new TelemetryClientOptions
            {
                Host = host,
                Port = port,
                DeviceId = Env("TELEMETRY_DEVICE"),
                Token = Env("TELEMETRY_TOKEN"),
                Agent = "csharp-counter",
                MaxQueuedReadings = Math.Max(100000, count),
            };
            if (Environment.GetEnvironmentVariable("TELEMETRY_DEBUG") == "1")
                options.Log = line => Console.Error.WriteLine("counter: " + line);

            using (var client = new TelemetryClient(options))
            {
                client.Connect(TimeSpan.FromSeconds(60));
                var start = Reading.ToNanoseconds(DateTimeOffset.UtcNow);
                for (var i = 0; i < count; i++)
                    client.AddInteger("example/counter", "counter", start + i * 1000000L, i + 1);
                client.Flush(TimeSpan.FromSeconds(120));
                var s = client.Stats;
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture,
                    "sent {0} readings: {1} accepted, {2} duplicate, {3} rejected{4}",
                    count, s.Accepted, s.Duplicate, s.Rejected, s.Dropped > 0 ? ", " + s.Dropped + " dropped" : ""));
                client.Close(TimeSpan.FromSeconds(5));
                return s.Dropped > 0 ? 1 : 0;
            }
        }
        catch (Exception e) when (e is TelemetryException || e is ArgumentException || e is FormatException
            || e is TimeoutException || e is OperationCanceledException || e is OverflowException)
        {
            Console.Error.WriteLine("counter: " + e.Message);
            return 1;
        }
    }

    private static string Env(string name)
    {
        var v = Environment.GetEnvironmentVariable(name);
        if (string.IsNullOrEmpty(v))
            throw new ArgumentException(name + " is not set");
        return v;
    }
}
