import CNGHTTP2
import CLinuxShim
import HTTP2
import Reactor
import TLS
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What `portforward forward` was asked to do.
public struct ForwardOptions: Sendable {
    public var server: String
    public var target: ForwardPath
    public var ports: [PortSpec]
    /// `localhost` (127.0.0.1 and ::1) or numeric addresses.
    public var addresses: [String]
    public var connectTimeoutSeconds: Double = 5
    /// The whole HTTP/1.1 upgrade exchange, request to answer head (`--upgrade-timeout`).
    public var upgradeTimeoutSeconds: Double = 10
    /// PING the relay after this long without a byte from it, and give up on the session when the
    /// answer has not come within the timeout (`--keepalive-interval`, `--keepalive-timeout`).
    public var keepalive: Keepalive? = Keepalive()
    /// For an `https://` server.
    public var tls = TLSClientOptions()
    /// A bearer token (`--token`), sent as `authorization: Bearer TOKEN` on every stream's
    /// HEADERS, and only to an `https://` server (`sendsToken`): as kubectl, never in plain text.
    public var token: String?

    public init(server: String, target: ForwardPath, ports: [PortSpec], addresses: [String] = ["localhost"]) {
        self.server = server
        self.target = target
        self.ports = ports
        self.addresses = addresses
    }
}

/// How the client speaks TLS to an `https://` relay (kubectl's flag names).
public struct TLSClientOptions: Sendable {
    /// `--certificate-authority`: the CA the relay's certificate must chain to (else the system store).
    public var certificateAuthorityFile: String?
    /// `--client-certificate`, `--client-key`: shown when the relay asks (`--client-ca-file`).
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// `--insecure-skip-tls-verify`: no check of the relay's certificate at all.
    public var insecureSkipVerify = false
    /// `--tls-server-name`: the name the certificate must carry, instead of the URL's host.
    public var serverName: String?
    /// Cipher suites to allow (OpenSSL names, `:`-separated), for measurements; nil: OpenSSL's defaults.
    public var cipherList: String?

    public init() {}
}

extension ForwardOptions {
    /// Whether the token goes out: there is one, and the server URL is https.
    public var sendsToken: Bool { token != nil && server.hasPrefix("https://") }
}

public struct ForwardError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// `http://host:port` or `https://host:port` split up.
public struct ServerURL: Sendable {
    public var host: String
    public var port: Int
    /// `https://`: TLS, then HTTP/2 (ALPN h2).
    public var secure = false

    public init(parsing text: String) throws {
        var rest = Substring(text)
        if rest.hasPrefix("https://") {
            secure = true
            rest = rest.dropFirst(8)
        } else if rest.hasPrefix("http://") {
            rest = rest.dropFirst(7)
        }
        let defaultPort = secure ? 443 : 80
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard !rest.isEmpty else { throw ForwardError("invalid server URL \"\(text)\"") }
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : defaultPort
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            port = Int(rest[rest.index(after: colon)...]) ?? -1
        } else {
            host = String(rest)
            port = defaultPort
        }
        guard (1...65535).contains(port) else { throw ForwardError("invalid server URL \"\(text)\": bad port") }
    }

    public var authority: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// The client: listens on local ports and tunnels each accepted connection as one stream of a
/// single HTTP/2 connection to the relay.
public final class Forwarder: CompletionHandler {
    public let options: ForwardOptions
    public let reactor: ReactorBackend
    private let server: ServerURL
    private var connection: Connection!
    private var listeners: [(fd: FileDescriptor, spec: PortSpec)] = []
    private let table = StreamTable()
    private var signals: SignalWatcher?
    /// The TLS pump under the relay connection (`https://`), and why it failed, if it did.
    private var tls: TLSConnection?
    private var tlsFailure: String?
    private var stopping = false
    /// Splice mode: local bytes go socket -> pipe -> relay connection (nil: pooled buffers).
    public var pipes: PipePool?
    /// Protocol errors nghttp2 handled on the relay connection, one line each (`-v`).
    public var log: ((String) -> Void)?
    /// 0 after a clean stop, 1 when the relay went away.
    public private(set) var exitCode: Int32 = 0
    public var print: (String) -> Void = { line in
        Swift.print(line)
        fflush(stdout)
    }
    public var printError: (String) -> Void = { line in
        fputs(line + "\n", stderr)
    }

    private lazy var acceptErrors = LogLimiter(perSecond: 1) { [unowned self] line in self.printError(line) }

    public init(options: ForwardOptions, reactor: ReactorBackend) throws {
        self.options = options
        self.reactor = reactor
        server = try ServerURL(parsing: options.server)
    }

    /// Connects and upgrades (blocking: nothing else is going on yet), then opens the listeners.
    /// Throws with the one line to show when the relay cannot be reached or refuses the pod.
    public func start() throws {
        let settings = SessionSettings()
        let fd: FileDescriptor
        let leftover: [UInt8]
        let session = try Session(role: .client, settings: settings)
        if server.secure {
            // TLS with ALPN h2: HTTP/2 with prior knowledge, each stream naming the pod.
            fd = try secureDial()
            leftover = []
        } else {
            fd = try dial()
            (leftover, _) = try upgrade(fd, settings: settings)
            try session.upgrade(settingsPayload: HTTPText.settingsPayload(settings))
        }
        connection = Connection(fd: fd, session: session, reactor: reactor)
        table.serve(connection, pipes: pipes) { [unowned self] reason in self.connectionClosed(reason) }
        table.onHeaders = { [unowned self] headers, stream, endStream in
            guard let tunnel = self.table[stream] else { return }
            // Only a head with :status answers the stream; trailers (a second block) do not.
            if let status = headers[":status"] { tunnel.responded(status: Int(status) ?? 0) }
            if endStream { tunnel.peerEnded() }
        }
        session.log = log.map { log in { line in log("relay connection: \(line)") } }
        connection.keepalive = options.keepalive
        try openListeners()
        leftover.withUnsafeBytes { connection.start(initial: $0) }
        do {
            signals = try SignalWatcher([SIGINT, SIGTERM, SIGHUP], reactor: reactor) { [unowned self] _ in self.shutdown() }
        } catch {
            // The default action still ends the process on Ctrl-C, only without a GOAWAY.
            printError("warning: cannot watch for Ctrl-C and SIGTERM (\(error)): they will end the client abruptly")
        }
    }

    /// Dials, then the TLS handshake (blocking, like the dial and the upgrade); returns the inner
    /// end of the TLS pump, which the relay connection reads and writes as plaintext.
    private func secureDial() throws -> FileDescriptor {
        let tcp = try dial()
        do {
            let context = try TLSContext.client(certificateAuthorityFile: options.tls.certificateAuthorityFile,
                                                clientCertificateFile: options.tls.clientCertificateFile,
                                                clientKeyFile: options.tls.clientKeyFile,
                                                insecureSkipVerify: options.tls.insecureSkipVerify,
                                                cipherList: options.tls.cipherList)
            let established = try TLSClientHandshake.perform(fd: tcp, context: context,
                                                             serverName: options.tls.serverName ?? server.host,
                                                             timeoutSeconds: options.upgradeTimeoutSeconds)
            guard established.alpn == "h2" else {
                throw ForwardError("the relay did not agree to HTTP/2 over TLS (ALPN \(established.alpn ?? "none")): is it a portforward relay?")
            }
            let pump = TLSConnection(established: established, reactor: reactor, peer: server.authority, deadlineSeconds: 2)
            pump.log = { [unowned self] line in
                self.tlsFailure = line
                self.log?(line)
            }
            tls = pump
            return try pump.openInner()
        } catch {
            if tls == nil { Glibc.close(tcp) }
            throw ForwardError("cannot connect to relay at \(options.server): \(error)")
        }
    }

    private func dial() throws -> FileDescriptor {
        let addresses = SocketAddress.resolve(server.host, port: server.port)
        guard !addresses.isEmpty else { throw ForwardError("cannot reach relay at \(options.server): cannot resolve \(server.host)") }
        var lastError = "unreachable"
        for address in addresses {
            guard let fd = try? Sockets.socket(for: address) else { continue }
            let result = address.withSockaddr { Glibc.connect(fd, $0, $1) }
            if result == 0 || pf_errno() == EINPROGRESS {
                var probe = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&probe, 1, Int32(options.connectTimeoutSeconds * 1000))
                let code = ready > 0 ? Sockets.socketError(fd) : ETIMEDOUT
                if code == 0 { return fd }
                lastError = SystemError.reason(code)
            } else {
                lastError = SystemError.reason(pf_errno())
            }
            Glibc.close(fd)
        }
        throw ForwardError("cannot reach relay at \(options.server): \(lastError)")
    }

    /// The HTTP/1.1 request that names the pod and asks for h2c; returns bytes read past the answer.
    /// The whole exchange has one deadline (`upgradeTimeoutSeconds`), however the answer trickles in,
    /// and an answer head larger than the head limit is refused.
    private func upgrade(_ fd: FileDescriptor, settings: SessionSettings) throws -> ([UInt8], ResponseHead) {
        let deadline = Clock.nanoseconds() + UInt64(options.upgradeTimeoutSeconds * 1e9)
        let request = Array(HTTPText.upgradeRequest(path: options.target.path, authority: server.authority,
                                                    settings: HTTPText.settingsPayload(settings)).utf8)
        func fail(_ reason: String) -> ForwardError {
            Glibc.close(fd)
            return ForwardError(reason)
        }
        /// Waits for `events` until the deadline; false when it passed.
        func wait(_ events: Int32) -> Bool {
            while true {
                let now = Clock.nanoseconds()
                if now >= deadline { return false }
                var probe = pollfd(fd: fd, events: Int16(events), revents: 0)
                let ready = poll(&probe, 1, Int32(min((deadline - now) / 1_000_000 + 1, 60_000)))
                if ready > 0 { return true }
                if ready < 0 && pf_errno() != EINTR { return true }
            }
        }
        let timeoutText = "\(options.server) did not answer the upgrade within \(options.upgradeTimeoutSeconds.formatted1) s"
        var offset = 0
        while offset < request.count {
            let sent = request.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if sent > 0 { offset += sent; continue }
            if sent < 0 && (pf_errno() == EAGAIN || pf_errno() == EINTR) {
                if !wait(Int32(POLLOUT)) { throw fail(timeoutText) }
                continue
            }
            throw fail("cannot reach relay at \(options.server): \(SystemError.reason(pf_errno()))")
        }
        let limits = HeadLimits()
        var bytes: [UInt8] = []
        var scanned = 0
        var chunk = [UInt8](repeating: 0, count: 4096)
        /// Reads more into `bytes`; false at end of file.
        func readMore() throws -> Bool {
            while true {
                let count = Glibc.read(fd, &chunk, chunk.count)
                if count > 0 {
                    bytes.append(contentsOf: chunk[..<count])
                    return true
                }
                if count == 0 { return false }
                let code = pf_errno()
                if code != EAGAIN && code != EINTR {
                    throw fail("\(options.server) closed the connection during the upgrade: \(SystemError.reason(code))")
                }
                if !wait(Int32(POLLIN)) { throw fail(timeoutText) }
            }
        }
        let head: ResponseHead
        while true {
            guard try readMore() else { throw fail("\(options.server) closed the connection during the upgrade") }
            switch bytes.withUnsafeBytes({ ResponseHead.parse($0, limits: limits, scannedBefore: scanned) }) {
            case .incomplete(let upTo):
                scanned = upTo
                continue
            case .invalid(_, let reason):
                throw fail("\(options.server) answered the upgrade with a malformed head (\(reason)): is it a portforward relay?")
            case .complete(let parsed):
                head = parsed
            }
            break
        }
        if head.status == 101 {
            return (Array(bytes[head.length...]), head)
        }
        // An error answer: read its one-line body (a little of it: the reason is one line).
        let length = min(head.contentLength, 4096)
        while bytes.count < head.length + length {
            guard (try? readMore()) == true else { break }
        }
        Glibc.close(fd)
        var body = String(decoding: bytes[head.length...].prefix(length), as: UTF8.self).trimmed
            .split(separator: "\n").first.map(String.init) ?? ""
        // A relay's refusals are one line of text/plain, or a Kubernetes Status (401, 403);
        // anything else is not a relay.
        var plain = head.header("content-type")?.hasPrefix("text/plain") ?? false
        if body.hasPrefix("Client sent an HTTP request to an HTTPS server") {
            throw ForwardError("\(options.server) serves TLS, not plain HTTP (it answered \(head.status): \(body)): use https://")
        }
        if head.header("content-type")?.hasPrefix("application/json") ?? false, let message = Refusal.statusMessage(body) {
            body = message
            plain = true
        }
        if plain && !body.isEmpty && Refusal.textIsMessage(status: head.status) { throw ForwardError(body) }
        throw ForwardError("\(options.server) answered \(head.status) to the upgrade"
                           + (plain && !body.isEmpty ? ": \(body)" : " (is it a portforward relay?)"))
    }

    private func openListeners() throws {
        for spec in options.ports {
            var chosen = spec.local
            var bound = 0
            var failures: [String] = []
            for host in options.addresses {
                for ip in host == "localhost" ? ["127.0.0.1", "::1"] : [host] {
                    guard let address = SocketAddress(ip: ip, port: chosen) else {
                        throw ForwardError("invalid address \"\(ip)\": expected localhost or a numeric IP address")
                    }
                    do {
                        let fd = try Sockets.listen(address)
                        let local = Sockets.localAddress(fd)
                        chosen = local.port
                        listeners.append((fd, spec))
                        bound += 1
                        self.print("Forwarding from \(local) -> \(spec.remote)")
                    } catch {
                        if host == "localhost" {
                            failures.append("\(error)")
                        } else {
                            throw ForwardError("unable to listen on port \(spec.local == 0 ? chosen : spec.local): \(error)")
                        }
                    }
                }
            }
            if bound == 0 {
                throw ForwardError("unable to listen on port \(spec.local): \(failures.joined(separator: "; "))")
            }
            for failure in failures { printError("warning: \(failure)") }
        }
        for (index, listener) in listeners.enumerated() {
            reactor.accept(listener.fd, handler: self, tag: UInt32(index))
        }
    }

    // MARK: completions: accepted connections

    public func complete(_ completion: Completion) {
        guard completion.result >= 0 else {
            // Out of descriptors, the reactor tries again every 10 ms: one line a second is enough.
            acceptErrors("error: accept: \(SystemError.reason(-completion.result))")
            return
        }
        let client = completion.result
        if stopping || connection.isClosed {
            reactor.close(client)
            return
        }
        let spec = listeners[Int(completion.tag)].spec
        self.print("Handling connection for \(spec.remote)")
        let carrier = HTTP2Stream(connection: connection)
        let tunnel = Tunnel(transport: carrier, reactor: reactor, pipes: pipes)
        carrier.carry(tunnel)
        do {
            var headers = [
                (":method", "POST"), (":scheme", server.secure ? "https" : "http"), (":authority", server.authority),
                (":path", options.target.path), ("port", "\(spec.remote)"),
            ]
            if options.sendsToken, let token = options.token { headers.append(("authorization", "Bearer \(token)")) }
            carrier.id = try connection.session.submitRequest(headers, body: carrier)
        } catch {
            printError("error: forwarding port \(spec.remote) to pod \(podName): \(error)")
            // Never opened: the tunnel ends here (no stream to reset), which cuts its link to the
            // carrier.
            tunnel.connectionLost()
            reactor.close(client)
            return
        }
        table.add(carrier, tunnel)
        tunnel.onRejected = { [unowned self] _, reason in
            self.printError("error: forwarding port \(spec.remote) to pod \(self.podName): \(reason)")
        }
        tunnel.attach(client)
        connection.flushSoon()
    }

    private var podName: String { "\(options.target.namespace)/\(options.target.pod)" }

    // MARK: ending

    /// Ctrl-C or SIGTERM: close the listeners and every stream, say GOAWAY, close the connection.
    public func shutdown() {
        if stopping { return }
        stopping = true
        for listener in listeners { reactor.close(listener.fd) }
        listeners.removeAll()
        for tunnel in table.tunnels { tunnel.abort() }
        connection.session.terminate()
        connection.flushSoon()
        // Should the relay not read the GOAWAY, stop anyway.
        _ = reactor.timer(nanoseconds: 2_000_000_000, handler: StopTimer(reactor), tag: 0)
    }

    private func connectionClosed(_ reason: String?) {
        if !stopping {
            if let tlsFailure, tlsFailure.contains("alert") {
                // TLS 1.3: the relay checks a client certificate after the client's handshake is
                // done, and its refusal arrives as an alert at the first read.
                let alert = tlsFailure.components(separatedBy: "TLS: ").last ?? tlsFailure
                printError("error: the relay at \(options.server) refused the TLS connection: \(alert)"
                           + (alert.contains("certificate") || alert.contains("unknown ca")
                              ? " (it asks for a client certificate signed by its --client-ca-file: see --client-certificate)" : ""))
            } else {
                printError("error: lost connection to relay at \(options.server): \(tlsFailure ?? reason ?? "closed")")
            }
            exitCode = 1
        }
        reactor.stop()
    }
}

private final class StopTimer: CompletionHandler {
    let reactor: ReactorBackend
    init(_ reactor: ReactorBackend) { self.reactor = reactor }
    func complete(_ completion: Completion) { reactor.stop() }
}
