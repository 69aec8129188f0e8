import CLinuxShim
import CSSL
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The client's handshake, blocking on a connected non-blocking socket (the client does it at
/// start, as it dials, before its reactor runs): OpenSSL still never touches the socket, only
/// memory BIOs; `poll` waits. The result goes to `TLSConnection(established:)`.
public enum TLSClientHandshake {
    public final class Established {
        let fd: FileDescriptor
        let ssl: OpaquePointer
        let input: OpaquePointer
        let output: OpaquePointer
        /// The protocol ALPN chose ("h2"), or nil.
        public let alpn: String?
        var handedOver = false

        init(fd: FileDescriptor, ssl: OpaquePointer, input: OpaquePointer, output: OpaquePointer, alpn: String?) {
            self.fd = fd
            self.ssl = ssl
            self.input = input
            self.output = output
            self.alpn = alpn
        }

        deinit { if !handedOver { SSL_free(ssl) } }
    }

    /// Verifies the server's certificate chain and that it names `serverName` (a DNS name or an IP
    /// address), unless the context skips verification. Throws one line; does not close `fd`.
    public static func perform(fd: FileDescriptor, context: TLSContext, serverName: String,
                               timeoutSeconds: Double) throws -> Established {
        precondition(!context.isServer)
        let (ssl, input, output) = try context.makeSession()
        let session = Established(fd: fd, ssl: ssl, input: input, output: output, alpn: nil)
        var address = in6_addr()
        let isAddress = inet_pton(AF_INET, serverName, &address) == 1 || inet_pton(AF_INET6, serverName, &address) == 1
        if !isAddress { _ = pf_ssl_set_sni(ssl, serverName) }
        if !context.skipsVerification {
            let parameters = SSL_get0_param(ssl)
            let set = isAddress ? X509_VERIFY_PARAM_set1_ip_asc(parameters, serverName) : SSL_set1_host(ssl, serverName)
            guard set == 1 else { throw TLSError.openSSL("invalid server name \(serverName)") }
        }
        let deadline = Clock.nanoseconds() + UInt64(timeoutSeconds * 1e9)
        func wait(_ events: Int32) throws {
            while true {
                let now = Clock.nanoseconds()
                if now >= deadline { throw TLSError("TLS handshake did not finish within \(timeoutSeconds) s") }
                var probe = pollfd(fd: fd, events: Int16(events), revents: 0)
                let ready = poll(&probe, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
                if ready > 0 || (ready < 0 && pf_errno() != EINTR) { return }
            }
        }
        func flush() throws {
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            while pf_bio_pending(output) > 0 {
                let count = Int(BIO_read(output, &chunk, Int32(chunk.count)))
                var offset = 0
                while offset < count {
                    let sent = chunk.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, count - offset) }
                    if sent > 0 { offset += sent; continue }
                    if sent < 0 && (pf_errno() == EAGAIN || pf_errno() == EINTR) { try wait(Int32(POLLOUT)); continue }
                    throw TLSError("TLS handshake: write: \(SystemError.reason(pf_errno()))")
                }
            }
        }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            ERR_clear_error()
            let result = SSL_do_handshake(ssl)
            try flush()
            if result == 1 { break }
            let error = SSL_get_error(ssl, result)
            guard error == SSL_ERROR_WANT_READ else {
                let verify = SSL_get_verify_result(ssl)
                let reason = OpenSSLErrors.drain() ?? "error \(error)"
                if verify != X509_V_OK, let text = X509_verify_cert_error_string(Int(verify)) {
                    throw TLSError("TLS handshake failed: the relay's certificate was refused: \(String(cString: text))")
                }
                if reason == "wrong version number" || reason == "packet length too long" || reason == "record layer failure" {
                    throw TLSError("TLS handshake failed: \(reason) (the relay does not speak TLS on this port: use http://)")
                }
                throw TLSError("TLS handshake failed: \(reason)")
            }
            while true {
                let count = Glibc.read(fd, &chunk, chunk.count)
                if count > 0 {
                    BIO_write(input, chunk, Int32(count))
                    break
                }
                if count == 0 {
                    throw TLSError("TLS handshake failed: the relay closed the connection (does it speak TLS? was a client certificate required?)")
                }
                let code = pf_errno()
                if code != EAGAIN && code != EINTR { throw TLSError("TLS handshake failed: \(SystemError.reason(code))") }
                try wait(Int32(POLLIN))
            }
        }
        var alpnText = [CChar](repeating: 0, count: 64)
        let alpn = pf_ssl_alpn(ssl, &alpnText, Int32(alpnText.count)) > 0
            ? String(decoding: alpnText.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
        session.handedOver = true
        return Established(fd: fd, ssl: ssl, input: input, output: output, alpn: alpn)
    }
}
