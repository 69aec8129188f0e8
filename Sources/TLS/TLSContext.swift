import CSSL
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A TLS failure as one line: what was being done and OpenSSL's reason (never key material or
/// certificate contents).
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }

    /// `what: reason`, the reason taken from (and clearing) OpenSSL's error queue.
    static func openSSL(_ what: String) -> TLSError {
        TLSError("\(what): \(OpenSSLErrors.drain() ?? "unknown error")")
    }
}

enum OpenSSLErrors {
    /// The reason of the oldest error on this thread's queue (`ERR_reason_error_string`, e.g.
    /// "wrong version number"), and clears the queue; nil when it was empty.
    static func drain() -> String? {
        let code = ERR_get_error()
        ERR_clear_error()
        guard code != 0 else { return nil }
        if let reason = ERR_reason_error_string(code) { return String(cString: reason) }
        var text = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &text, text.count)
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An `SSL_CTX`: the relay's (certificate, key, optional client CA) or the client's (trust,
/// optional client certificate). TLS 1.2 and 1.3 only, no renegotiation.
public final class TLSContext {
    let raw: OpaquePointer
    public let isServer: Bool
    /// The relay verifies client certificates against a CA (`--client-ca-file`).
    public let verifiesClients: Bool
    /// The client skips verification of the relay's certificate (`--insecure-skip-tls-verify`).
    public let skipsVerification: Bool

    private init(server: Bool, verifiesClients: Bool = false, skipsVerification: Bool = false) throws {
        ERR_clear_error()
        guard let context = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSError.openSSL("SSL_CTX_new")
        }
        raw = context
        isServer = server
        self.verifiesClients = verifiesClients
        self.skipsVerification = skipsVerification
        guard pf_ssl_ctx_set_min_tls12(context) == 1 else { throw TLSError.openSSL("TLS 1.2 minimum") }
        // Renegotiation is a server-side cost a client can ask for at will (and a source of old
        // attacks): refused, as Go's servers refuse it. Compression off (CRIME).
        pf_ssl_ctx_set_hardening(context)
        // A session is one long connection (streams need no new handshake): no tickets to resume it.
        if server { _ = SSL_CTX_set_num_tickets(context, 0) }
    }

    deinit { SSL_CTX_free(raw) }

    /// OpenSSL opens a path as it is: a FIFO would hold the start forever (open blocks until a
    /// writer comes), as the pods, token and rules files are not allowed to. A missing file is
    /// left to OpenSSL's own message.
    static func requireRegular(_ path: String, _ flag: String) throws {
        var status = stat()
        guard stat(path, &status) == 0 else { return }
        guard status.st_mode & S_IFMT == S_IFREG else { throw TLSError("cannot load \(flag) \(path): not a regular file") }
    }

    /// The relay's context: `--tls-cert-file` (a chain, leaf first), `--tls-private-key-file`,
    /// and with `--client-ca-file` a client certificate that CA signed is required at the handshake.
    public static func server(certificateFile: String, privateKeyFile: String, clientCAFile: String?,
                              cipherList: String? = nil) throws -> TLSContext {
        for (file, flag) in [(certificateFile, "--tls-cert-file"), (privateKeyFile, "--tls-private-key-file"), (clientCAFile, "--client-ca-file")] {
            if let file { try requireRegular(file, flag) }
        }
        let context = try TLSContext(server: true, verifiesClients: clientCAFile != nil)
        let raw = context.raw
        try useCertificate(certificateFile, "--tls-cert-file", key: privateKeyFile, "--tls-private-key-file", in: raw)
        if let clientCAFile {
            guard SSL_CTX_load_verify_locations(raw, clientCAFile, nil) == 1,
                  let names = SSL_load_client_CA_file(clientCAFile) else {
                throw TLSError.openSSL("cannot load --client-ca-file \(clientCAFile)")
            }
            SSL_CTX_set_client_CA_list(raw, names)
            SSL_CTX_set_verify(raw, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        }
        try context.restrict(cipherList)
        pf_ssl_ctx_server_alpn(raw)
        return context
    }

    /// The client's context: the relay's certificate verified against `certificateAuthorityFile`
    /// (else the system store) unless `insecureSkipVerify`; a client certificate when given.
    /// The `...Data` arguments are PEM in memory (a kubeconfig's `-data` fields, an exec plugin's
    /// answer): read through a memory BIO, never written to a file; each takes the place of its file.
    /// `alpn`: the protocols offered, in order of preference (`h2`; `http/1.1` for an upgrade).
    public static func client(certificateAuthorityFile: String?, clientCertificateFile: String?, clientKeyFile: String?,
                              insecureSkipVerify: Bool, cipherList: String? = nil,
                              certificateAuthorityData: [UInt8]? = nil, clientCertificateData: [UInt8]? = nil,
                              clientKeyData: [UInt8]? = nil, alpn: [String] = ["h2"]) throws -> TLSContext {
        for (file, flag) in [(certificateAuthorityFile, "--certificate-authority"), (clientCertificateFile, "--client-certificate"), (clientKeyFile, "--client-key")] {
            if let file { try requireRegular(file, flag) }
        }
        let context = try TLSContext(server: false, skipsVerification: insecureSkipVerify)
        let raw = context.raw
        if let data = certificateAuthorityData {
            try PEMMemory.addAuthorities(data, to: raw)
        } else if let file = certificateAuthorityFile {
            guard SSL_CTX_load_verify_locations(raw, file, nil) == 1 else {
                throw TLSError.openSSL("cannot load --certificate-authority \(file)")
            }
        } else if SSL_CTX_set_default_verify_paths(raw) != 1 {
            throw TLSError.openSSL("cannot load the system's trusted certificates")
        }
        SSL_CTX_set_verify(raw, insecureSkipVerify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nil)
        if clientCertificateData != nil || clientKeyData != nil {
            guard let certificate = clientCertificateData, let key = clientKeyData else {
                throw TLSError("client-certificate-data and client-key-data go together")
            }
            try PEMMemory.useCertificateChain(certificate, key: key, in: raw)
        } else {
            switch (clientCertificateFile, clientKeyFile) {
            case (let certificate?, let key?):
                try useCertificate(certificate, "--client-certificate", key: key, "--client-key", in: raw)
            case (nil, nil):
                break
            default:
                throw TLSError("--client-certificate and --client-key go together")
            }
        }
        try context.restrict(cipherList)
        // The wire format: each name after its length byte.
        let protocols = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        guard SSL_CTX_set_alpn_protos(raw, protocols, UInt32(protocols.count)) == 0 else { throw TLSError.openSSL("ALPN") }
        return context
    }

    /// Restricts TLS 1.2 cipher suites (OpenSSL's cipher-list syntax) and TLS 1.3 suites (names
    /// joined by `:`) to those named, e.g. for a measurement with AES-128-GCM only.
    private func restrict(_ cipherList: String?) throws {
        guard let cipherList else { return }
        let names = cipherList.split(separator: ":").map(String.init)
        let tls13 = names.filter { $0.hasPrefix("TLS_") }.joined(separator: ":")
        let tls12 = names.filter { !$0.hasPrefix("TLS_") }.joined(separator: ":")
        if !tls13.isEmpty, SSL_CTX_set_ciphersuites(raw, tls13) != 1 { throw TLSError.openSSL("cipher suites \(tls13)") }
        if !tls12.isEmpty, SSL_CTX_set_cipher_list(raw, tls12) != 1 { throw TLSError.openSSL("cipher list \(tls12)") }
    }

    /// A new `SSL` on memory BIOs: ciphertext goes in through `input` and comes out of `output`,
    /// and no OpenSSL call touches a socket.
    /// A certificate chain and its key from PEM files (`flag` names each in the messages).
    private static func useCertificate(_ certificate: String, _ certificateFlag: String, key: String, _ keyFlag: String,
                                       in raw: OpaquePointer) throws {
        guard SSL_CTX_use_certificate_chain_file(raw, certificate) == 1 else {
            throw TLSError.openSSL("cannot load \(certificateFlag) \(certificate)")
        }
        guard SSL_CTX_use_PrivateKey_file(raw, key, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError.openSSL("cannot load \(keyFlag) \(key)")
        }
        guard SSL_CTX_check_private_key(raw) == 1 else {
            throw TLSError.openSSL("\(keyFlag) \(key) does not match \(certificateFlag)")
        }
    }

    func makeSession() throws -> (ssl: OpaquePointer, input: OpaquePointer, output: OpaquePointer) {
        guard let ssl = SSL_new(raw) else { throw TLSError.openSSL("SSL_new") }
        guard let input = BIO_new(BIO_s_mem()), let output = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.openSSL("BIO_new")
        }
        // An empty memory BIO says "retry" rather than end of file.
        _ = BIO_ctrl(input, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, nil)
        _ = BIO_ctrl(output, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, nil)
        SSL_set_bio(ssl, input, output)
        if isServer { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
        return (ssl, input, output)
    }
}

/// Kernel TLS (the `tls` upper-layer protocol): listed in /proc/sys/net/ipv4/tcp_available_ulp
/// where the kernel can take the session keys.
public enum KernelTLS {
    public static let available: Bool = availableReason == nil

    /// Why kTLS cannot be used here, or nil when it can.
    public static let availableReason: String? = {
        let path = "/proc/sys/net/ipv4/tcp_available_ulp"
        guard let file = fopen(path, "r") else { return "\(path) cannot be read" }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        guard fgets(&line, Int32(line.count), file) != nil else { return "\(path) is empty" }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let listed = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        return listed.contains("tls") ? nil : "the kernel lists no tls ULP in \(path) (\(listed.joined(separator: " ")))"
    }()
}
