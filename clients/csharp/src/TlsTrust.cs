// Trusting a collector whose certificate comes from the deployment's own CA (see
// `telemetry certs`) rather than a public one: validation callbacks for SslStream.
// FromCaFile checks the chain up to a given CA (needs a runtime whose X509Chain handles the
// CA's key type: .NET does; Mono 6.8 cannot decode EC keys and then refuses the connection);
// PinnedCertificate accepts exactly one server certificate, compared byte for byte, which
// works on every runtime.
using System;
using System.IO;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace SensorTelemetry
{
    public static class TlsTrust
    {
        /// <summary>A validation callback trusting exactly the CA in a PEM (or DER) file.</summary>
        public static RemoteCertificateValidationCallback FromCaFile(string path)
        {
            var ca = LoadCertificate(File.ReadAllBytes(path));
            return (sender, certificate, chain, errors) => Validate(ca, certificate, errors);
        }

        /// <summary>
        /// A validation callback accepting exactly the server certificate in a PEM (or DER)
        /// file, byte for byte (and only when it names the host the client asked for).
        /// </summary>
        public static RemoteCertificateValidationCallback PinnedCertificate(string path)
        {
            var pinned = LoadCertificate(File.ReadAllBytes(path)).GetRawCertData();
            return (sender, certificate, chain, errors) =>
            {
                if (certificate == null || (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != SslPolicyErrors.None)
                    return false;
                var raw = certificate.GetRawCertData();
                if (raw.Length != pinned.Length)
                    return false;
                var diff = 0;
                for (var i = 0; i < raw.Length; i++)
                    diff |= raw[i] ^ pinned[i];
                return diff == 0;
            };
        }

        /// <summary>The first certificate in PEM text, or DER bytes as they are.</summary>
        public static X509Certificate2 LoadCertificate(byte[] data)
        {
            var text = Encoding.ASCII.GetString(data);
            const string Begin = "-----BEGIN CERTIFICATE-----";
            const string End = "-----END CERTIFICATE-----";
            var start = text.IndexOf(Begin, StringComparison.Ordinal);
            if (start < 0)
                return new X509Certificate2(data);
            start += Begin.Length;
            var end = text.IndexOf(End, start, StringComparison.Ordinal);
            if (end < 0)
                throw new InvalidDataException("PEM certificate without its END line");
            return new X509Certificate2(Convert.FromBase64String(text.Substring(start, end - start).Trim()));
        }

        private static bool Validate(X509Certificate2 ca, X509Certificate certificate, SslPolicyErrors errors)
        {
            if (certificate == null || (errors & ~SslPolicyErrors.RemoteCertificateChainErrors) != SslPolicyErrors.None)
                return false; // no certificate, or it does not name the host we asked for
            try
            {
                using (var chain = new X509Chain())
                {
                    chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                    chain.ChainPolicy.VerificationFlags = X509VerificationFlags.AllowUnknownCertificateAuthority;
                    chain.ChainPolicy.ExtraStore.Add(ca);
                    if (!chain.Build(new X509Certificate2(certificate)))
                        return false;
                    var root = chain.ChainElements[chain.ChainElements.Count - 1].Certificate;
                    return root.Thumbprint == ca.Thumbprint;
                }
            }
            catch (NotSupportedException)
            {
                return false; // this runtime cannot check the chain (see the top of this file)
            }
            catch (System.Security.Cryptography.CryptographicException)
            {
                return false;
            }
        }
    }
}
