import CNGHTTP2
import CLinuxShim
import HTTP2
import Reactor
import SPDY
import TLS
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What the client speaks to the server (`--protocol`).
public enum WireProtocol: String, Sendable, CaseIterable {
    /// h2 when the server offers it (ALPN over TLS; the answer to the h2c upgrade over http),
    /// else SPDY in a WebSocket, else plain SPDY, as kubectl falls back.
    case auto
    /// Our HTTP/2 protocol: one stream per local connection.
    case h2
    /// SPDY/3.1 in binary WebSocket messages (`SPDY/3.1+portforward.k8s.io`), kubectl 1.31+'s.
    case websocket
    /// Plain SPDY/3.1 (`Upgrade: SPDY/3.1`), kubectl 1.30's and older.
    case spdy

    /// As the `-v` line names it.
    public var name: String {
        switch self {
        case .auto: "auto"
        case .h2: "HTTP/2"
        case .websocket: "SPDY/3.1 in a WebSocket"
        case .spdy: "SPDY/3.1"
        }
    }
}

/// What `portforward forward` was asked to do.
public struct ForwardOptions: Sendable {
    public var server: String
    public var target: ForwardPath
    public var ports: [PortSpec]
    /// `localhost` (127.0.0.1 and ::1) or numeric addresses.
    public var addresses: [String]
    public var connectTimeoutSeconds: Double = 5
    /// `--protocol`.
    public var wireProtocol = WireProtocol.auto
    /// The whole HTTP/1.1 upgrade exchange, request to answer head (`--upgrade-timeout`).
    public var upgradeTimeoutSeconds: Double = 10
    /// PING the relay after this long without a byte from it, and give up on the session when the
    /// answer has not come within the timeout (`--keepalive-interval`, `--keepalive-timeout`).
    public var keepalive: Keepalive? = Keepalive()
    /// For an `https://` server.
    public var tls = TLSClientOptions()
    /// A bearer token (`--token`), sent as `authorization: Bearer TOKEN` on every stream's
    /// HEADERS, and only to an `https://` server (`sendsCredentials`): as kubectl, never in plain text.
    public var token: String?
    /// A kubeconfig user's `tokenFile` (or `--token-file`), read again at each dial (as client-go
    /// rereads it), sent as `token` is; `token` wins.
    public var tokenFile: String?
    /// Named ports (`http`, `8080:http`), resolved from the pod's spec at the first read; empty:
    /// `ports` as given.
    public var requests: [PortRequest] = []
    /// `--pod-running-timeout`: how long to wait for the pod to be Running, at start and after a
    /// lost session (then a pod that is gone ends the client).
    public var podRunningTimeoutSeconds: Double = 60
    /// What the client does when its session to the relay is lost.
    public var reconnect = ReconnectSettings()
    /// Names the user the credentials come from in lines (`user "alice"`), never the secret.
    public var credentialSource: String?

    public init(server: String, target: ForwardPath, ports: [PortSpec], addresses: [String] = ["localhost"]) {
        self.server = server
        self.target = target
        self.ports = ports
        self.addresses = addresses
    }
}

/// What the client does when its session drops (the relay restarts, GOAWAY, a keepalive timeout).
/// docs/PROTOCOL.md, "The client's limits".
public struct ReconnectSettings: Sendable {
    /// false (`--no-reconnect`): a lost session ends the client, as before.
    public var enabled = true
    /// How long a local connection accepted without a session waits for the next one
    /// (`--session-wait-timeout`) before it is closed.
    public var sessionWaitSeconds: Double = 10
    /// The first re-dial comes after about this long; each failure doubles it up to `maximumBackoff`.
    public var initialBackoffSeconds: Double = 0.1
    public var maximumBackoffSeconds: Double = 1.5
    /// Each wait is drawn from [wait x (1 - jitter), wait], so that clients of one relay do not
    /// re-dial in step.
    public var jitter: Double = 0.5

    public init() {}

    /// The wait after `failures` failed dials, given `random` in [0, 1).
    public func backoff(failures: Int, random: Double) -> Double {
        let base = min(initialBackoffSeconds * Double(1 << min(failures, 20)), maximumBackoffSeconds)
        return base * (1 - jitter * random)
    }
}

/// How the client speaks TLS to an `https://` relay (kubectl's flag names).
public struct TLSClientOptions: Sendable {
    /// `--certificate-authority`: the CA the relay's certificate must chain to (else the system store).
    public var certificateAuthorityFile: String?
    /// `--client-certificate`, `--client-key`: shown when the relay asks (`--client-ca-file`).
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// PEM in memory (a kubeconfig's `certificate-authority-data`, `client-certificate-data`,
    /// `client-key-data`): each takes the place of its file.
    public var certificateAuthorityData: [UInt8]?
    public var clientCertificateData: [UInt8]?
    public var clientKeyData: [UInt8]?
    /// `--insecure-skip-tls-verify`: no check of the relay's certificate at all.
    public var insecureSkipVerify = false
    /// `--tls-server-name`: the name the certificate must carry, instead of the URL's host.
    public var serverName: String?
    /// Cipher suites to allow (OpenSSL names, `:`-separated), for measurements; nil: OpenSSL's defaults.
    public var cipherList: String?

    public init() {}
}

extension ForwardOptions {
    /// Whether credentials are sent at all: only to an https:// server.
    public var sendsCredentials: Bool { server.hasPrefix("https://") }
}

public struct ForwardError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// The relay's HTTP status when it refused the upgrade (404: no such pod).
    public var status: Int?
    /// `--protocol auto` tries the next protocol after this refusal: an answer that says the
    /// server does not speak what was asked, not that the pod or the caller is wrong.
    var allowsFallback: Bool { status.map(Self.allowsFallback) ?? false }
    static func allowsFallback(_ status: Int) -> Bool { ![401, 403, 404].contains(status) }
    public init(_ description: String, status: Int? = nil) {
        self.description = description
        self.status = status
    }
}

/// The client: listens on local ports and tunnels each accepted connection as one stream of a
/// single connection to the relay: an HTTP/2 stream, or a SPDY/3.1 stream pair (plain, or in a
/// WebSocket) as kubectl's. The session's life (docs/ARCHITECTURE.md, "The client's session"):
/// dial (blocking, bounded), read the pod (an HTTP/2 GET on the session; for SPDY an HTTP/1.1 GET
/// before the upgrade), ready; when it drops, the listeners stay, new local connections wait for
/// the next session, and the client re-dials with backoff and reads the pod again.
public final class Forwarder: CompletionHandler {
    public let options: ForwardOptions
    public let reactor: ReactorBackend
    private let server: ServerURL
    private var connection: Connection?
    /// The protocol of the session of the moment (`--protocol auto` decides at the first dial).
    public private(set) var speaking = WireProtocol.h2
    /// `--protocol auto`: what the server agreed to last time. Re-dials ask for it first, without
    /// the probes before it (two round trips each against a server that speaks only SPDY); a
    /// server that refuses it is probed in full again.
    private var settled: WireProtocol?
    /// The SPDY session (plain or in a WebSocket), when that is what the relay speaks.
    private var spdy: SPDYClientSession?
    /// Before a SPDY session: the HTTP/1.1 connection the pod read and the upgrade go on.
    private var exchange: HTTPExchange?
    /// Counts dials: a deferred pod read belongs to the session of its dial.
    private var generation = 0
    /// The listening sockets, each with its spec and the index of the port request it serves.
    private var listeners: [(fd: FileDescriptor, spec: PortSpec, request: Int)] = []
    /// The streams of the session of the moment (`connection`).
    private var table = StreamTable()
    /// HTTP/2 connections the relay said GOAWAY on while a session was up: their streams go on
    /// to their end, no new stream is opened on them, and a new session was dialled at once
    /// (`goaway`). Each leaves this list when it closes.
    private var draining: [(connection: Connection, table: StreamTable, tls: TLSConnection?)] = []
    private var signals: SignalWatcher?
    /// The TLS pump under the relay connection (`https://`), and why it failed, if it did.
    private var tls: TLSConnection?
    private var tlsFailure: String?

    private enum Phase { case connecting, checking, ready, lost, stopping }
    private var phase = Phase.connecting
    /// Whether a session was ever ready (the listeners are open).
    private var everReady = false
    /// When the last ready session was lost, and when the pod was first seen missing or not Running.
    private var lostSince: UInt64 = 0
    private var podWaitSince: UInt64?
    private var failedDials = 0
    /// The pod read in flight on the session: its stream, answer status and body.
    private var podStream: StreamID?
    private var podStatus = 0
    private var podBody: [UInt8] = []
    private var retriedAuthentication = false
    /// Local connections accepted without a session, waiting for the next one.
    private var waiting: [(fd: FileDescriptor, spec: PortSpec, since: UInt64)] = []
    private var sweepArmed = false
    /// Local connections with a stream, by tunnel: the pod port, for the line when they are reset.
    private var open: [ObjectIdentifier: Int] = [:]
    /// The kubeconfig's `tokenFile`, as read at the last dial.
    private var tokenFromFile: String?

    /// A kubeconfig user's exec credential plugin: asked for the token of each stream (it runs
    /// again only when its credential expired, or after a 401).
    public var execPlugin: ExecPlugin?
    /// Splice mode: local bytes go socket -> pipe -> relay connection (nil: pooled buffers).
    public var pipes: PipePool?
    /// Protocol errors nghttp2 handled on the relay connection, one line each (`-v`).
    public var log: ((String) -> Void)?
    /// 0 after a clean stop, 1 when the relay went away (or the pod did).
    public private(set) var exitCode: Int32 = 0
    public var print: (String) -> Void = { line in
        Swift.print(line)
        fflush(stdout)
    }
    public var printError: (String) -> Void = { line in
        fputs(line + "\n", stderr)
    }

    private lazy var acceptErrors = LogLimiter(perSecond: 1) { [unowned self] line in self.printError(line) }
    private lazy var credentialErrors = LogLimiter(perSecond: 1) { [unowned self] line in self.printError(line) }

    public init(options: ForwardOptions, reactor: ReactorBackend) throws {
        self.options = options
        self.reactor = reactor
        server = try ServerURL(parsing: options.server)
        table = makeTable()
    }

    /// A table for one HTTP/2 connection's streams: the pod read (on the session of the moment
    /// only) and the tunnels.
    private func makeTable() -> StreamTable {
        let table = StreamTable()
        table.onHeaders = { [unowned self, unowned table] headers, stream, endStream in
            if table === self.table && stream == self.podStream {
                if let status = headers[":status"] { self.podStatus = Int(status) ?? 0 }
                return
            }
            guard let tunnel = table[stream] else { return }
            // Only a head with :status answers the stream; trailers (a second block) do not.
            if let status = headers[":status"] { tunnel.responded(status: Int(status) ?? 0) }
            if endStream { tunnel.peerEnded() }
        }
        table.onOtherData = { [unowned self, unowned table] stream, data in
            if table === self.table, stream == self.podStream, self.podBody.count < Self.maximumPodAnswer {
                self.podBody.append(contentsOf: data)
            }
        }
        table.onOtherClosed = { [unowned self, unowned table] stream, code in
            if table === self.table, stream == self.podStream { self.podAnswered(reset: code != 0) }
        }
        return table
    }

    /// The most of a pod read's answer kept (a Pod object is a few KiB).
    public static let maximumPodAnswer = 1 << 20

    /// Connects and upgrades (blocking: nothing else is going on yet), then reads the pod; the
    /// listeners open once it is Running. Throws with the one line to show when the relay cannot
    /// be reached or refuses the session.
    public func start() throws {
        try connect()
        phase = .checking
        readPod()
        do {
            signals = try SignalWatcher([SIGINT, SIGTERM, SIGHUP], reactor: reactor) { [unowned self] _ in self.shutdown() }
        } catch {
            // The default action still ends the process on Ctrl-C, only without a GOAWAY.
            printError("warning: cannot watch for Ctrl-C and SIGTERM (\(error)): they will end the client abruptly")
        }
    }

    /// One session: dial, TLS or the h2c upgrade, the HTTP/2 connection started.
    private func connect() throws {
        if let path = options.tokenFile, options.sendsCredentials {
            do {
                tokenFromFile = try ConfigFile.read(path, kind: "token file", maximumSize: 1 << 20).trimmed
            } catch {
                throw ForwardError("\(error)")  // "cannot read token file PATH: ..."
            }
        }
        let settings = SessionSettings()
        tls = nil
        tlsFailure = nil
        generation += 1
        let auto = options.wireProtocol == .auto
        let wanted = auto ? settled ?? .auto : options.wireProtocol
        if server.secure {
            // TLS; ALPN portforward-h2: HTTP/2 with prior knowledge, each stream naming the pod.
            // Otherwise HTTP/1.1 and an upgrade to SPDY. auto never offers plain h2: a Kubernetes
            // API server agrees to it (for its API) and would then refuse every stream, since it
            // port-forwards only after an HTTP/1.1 upgrade. A forced h2 offers it too, for a relay
            // older than the name. ALPN costs no round trip: auto offers both while h2 is what
            // the server last agreed to.
            let offer = wanted == .h2 && !auto ? [Self.alpnH2, "h2"]
                : wanted == .h2 || wanted == .auto ? [Self.alpnH2, "http/1.1"] : ["http/1.1"]
            let (fd, alpn) = try secureDial(offering: offer)
            if alpn == Self.alpnH2 || alpn == "h2" {
                return try startH2(fd, session: Session(role: .client, settings: settings), leftover: [])
            }
            return startHTTP1(fd, speaking: wanted == .spdy ? .spdy : .websocket)
        }
        if wanted == .h2 || wanted == .auto {
            let session = try Session(role: .client, settings: settings)
            let fd = try dial()
            do {
                let (leftover, _) = try upgrade(fd, settings: settings)
                try session.upgrade(settingsPayload: HTTPText.settingsPayload(settings))
                return try startH2(fd, session: session, leftover: leftover)
            } catch let error as ForwardError where auto && error.allowsFallback {
                // Not a relay of ours (an API server, a kubelet): kubectl's protocols.
                log?("h2c upgrade refused (\(error)): trying SPDY in a WebSocket")
                settled = nil
            }
        }
        return startHTTP1(try dial(), speaking: wanted == .spdy ? .spdy : .websocket)
    }

    /// The ALPN name of our protocol over TLS: HTTP/2, each stream a forwarded connection.
    public static let alpnH2 = "portforward-h2"

    /// The HTTP/2 connection on `fd`, after the h2c upgrade or TLS with ALPN portforward-h2 (or h2).
    private func startH2(_ fd: FileDescriptor, session: Session, leftover: [UInt8]) throws {
        speaking = .h2
        if options.wireProtocol == .auto { settled = .h2 }
        log?("session to \(options.server): \(speaking.name)")
        let connection = Connection(fd: fd, session: session, reactor: reactor)
        self.connection = connection
        sessionStarted = Clock.nanoseconds()
        let table = self.table
        table.serve(connection, pipes: pipes) { [unowned self, unowned connection] reason in
            if self.connection === connection { return self.connectionClosed(reason) }
            self.draining.removeAll { $0.connection === connection }
        }
        // The local connections open at the drop, named before the table ends them.
        let ending = connection.onClose
        connection.onClose = { [unowned self] reason in
            self.noteResets(of: table)
            ending?(reason)
        }
        session.onGoaway = { [unowned self, unowned connection] in self.goaway(connection) }
        session.log = log.map { log in { line in log("relay connection: \(line)") } }
        connection.keepalive = options.keepalive
        leftover.withUnsafeBytes { connection.start(initial: $0) }
    }

    /// The bearer token for the next request: `--token`, else the kubeconfig user's token or
    /// tokenFile, else its exec plugin's (run only when its credential expired); none for http://.
    private func bearer() -> String? {
        guard options.sendsCredentials else { return nil }
        if let token = options.token { return token }
        if let tokenFromFile, !tokenFromFile.isEmpty { return tokenFromFile }
        if let plugin = execPlugin {
            do {
                return try plugin.credential().token
            } catch {
                credentialErrors("error: \(error)")
            }
        }
        return nil
    }

    // MARK: the pod

    /// The pod's read. With `--node`, a list selecting the pod by name and node: on a gateway
    /// where two nodes report the name, a read by name alone is a 409.
    private var podPath: String {
        let namespace = server.target("/api/v1/namespaces/\(options.target.namespace)/pods")
        guard let node = options.target.node else { return "\(namespace)/\(options.target.pod)" }
        return "\(namespace)?fieldSelector=metadata.name%3D\(options.target.pod)%2Cspec.nodeName%3D\(node)"
    }
    /// The port-forward request's path (the h2 streams', the upgrades'), after the server URL's path.
    private var forwardPath: String { server.target(options.target.path) }
    private var podName: String { "\(options.target.namespace)/\(options.target.pod)" }

    /// GET the pod on the session (the relay answers API reads on its streams, over h2c and TLS),
    /// or before a SPDY upgrade on its HTTP/1.1 connection.
    private func readPod() {
        if speaking != .h2 {
            if let exchange = exchange ?? redialHTTP1() { readPod(on: exchange) }
            return
        }
        guard let connection, !connection.isClosed else { return }
        var headers = [
            (":method", "GET"), (":scheme", server.secure ? "https" : "http"), (":authority", server.authority),
            (":path", podPath), ("accept", "application/json"),
        ]
        if let token = bearer() { headers.append(("authorization", "Bearer \(token)")) }
        podStatus = 0
        podBody = []
        do {
            podStream = try connection.session.submitRequest(headers, body: nil)
        } catch {
            connection.close(reason: "cannot ask for pod \(podName): \(error)")
            return
        }
        connection.flushSoon()
    }

    private func podAnswered(reset: Bool) {
        podStream = nil
        let status = podStatus
        let body = String(decoding: podBody, as: UTF8.self)
        podBody = []
        guard phase == .checking else { return }
        if reset || status == 0 {
            return podUnavailable("the relay reset the read of pod \(podName)", gone: false)
        }
        if status == 401, let plugin = execPlugin, !retriedAuthentication {
            // The plugin's token was refused: run it again, once.
            retriedAuthentication = true
            plugin.forget()
            return readPod()
        }
        if status == 200 {
            do {
                let pod: PodDescription
                if let node = options.target.node {
                    // A relay that does not know field selectors answers the whole namespace.
                    guard let found = try PodDescription.list(json: body).first(where: {
                        $0.name == options.target.pod && ($0.nodeName ?? node) == node
                    }) else {
                        return podUnavailable("pod \"\(podName)\" not found on node \"\(node)\"", gone: true)
                    }
                    pod = found
                } else {
                    pod = try PodDescription(json: body)
                }
                if let problem = pod.notRunning { return podUnavailable(problem, gone: false) }
                if speaking != .h2 { return upgradeToSPDY(then: pod) }
                return podReady(pod)
            } catch {
                // At start the server is not what the user thinks it is; after a drop it may be a
                // proxy in front of a restarting relay: wait, as for a pod not Running.
                if everReady { return podUnavailable("reading pod \(podName): \(error)", gone: false) }
                return fatal("error: reading pod \(podName): \(error)")
            }
        }
        let message = Refusal.statusMessage(body) ?? "the relay answered \(status) to the read of pod \(podName)"
        switch status {
        case 404: podUnavailable(message, gone: true)
        // Two nodes report the name (a gateway): waiting does not choose; --node does.
        case 409: fatal("error: \(message)")
        case 401, 403:
            fatal("error: \(message)" + (options.credentialSource.map { " (credentials of \($0))" } ?? ""))
        default: podUnavailable(message, gone: false)
        }
    }

    /// The pod is missing or not Running: at start a missing pod ends the client (as kubectl);
    /// otherwise read it again until `--pod-running-timeout` has passed since the wait began.
    private func podUnavailable(_ reason: String, gone: Bool) {
        let now = Clock.nanoseconds()
        if gone && !everReady { return fatal("error: \(reason)") }
        let since = podWaitSince ?? (everReady ? lostSince : now)
        if podWaitSince == nil {
            podWaitSince = since
            printError("Waiting up to \(options.podRunningTimeoutSeconds.formatted1) s for pod \(podName): \(reason)")
        }
        if Double(now - since) / 1e9 >= options.podRunningTimeoutSeconds {
            return fatal(everReady
                ? "error: pod \(podName) is gone: \(reason) (waited \(options.podRunningTimeoutSeconds.formatted1) s, --pod-running-timeout)"
                : "error: \(reason) (waited \(options.podRunningTimeoutSeconds.formatted1) s, --pod-running-timeout)")
        }
        guard phase == .checking else {
            // Refused at the upgrade (plain HTTP names the pod there): dial again later.
            phase = .lost
            failedDials += 1
            return scheduleRedial()
        }
        let dial = generation
        after(options.reconnect.backoff(failures: 3, random: .random(in: 0..<1))) { [weak self] in
            guard let self, self.phase == .checking, self.generation == dial else { return }
            self.readPod()
        }
    }

    private func podReady(_ pod: PodDescription) {
        podWaitSince = nil
        retriedAuthentication = false
        failedDials = 0
        if !everReady {
            do {
                let specs = options.requests.isEmpty ? options.ports : try options.requests.map { try $0.resolve(in: pod) }
                try openListeners(specs)
            } catch {
                return fatal(ForwardError.line(error))
            }
            everReady = true
        } else {
            printError("Reconnected to relay at \(options.server): forwarding to pod \(podName) again")
            refreshNamedPorts(pod)
        }
        phase = .ready
        let queued = waiting
        waiting.removeAll()
        for entry in queued { openStream(entry.fd, spec: entry.spec) }
    }

    /// Ends the client with one line.
    private func fatal(_ line: String) {
        guard phase != .stopping else { return }
        printError(line)
        exitCode = 1
        phase = .stopping
        reactor.stop()
    }

    /// Dials, then the TLS handshake (blocking, like the dial and the upgrade); returns the inner
    /// end of the TLS pump, which the relay connection reads and writes as plaintext, and the
    /// protocol ALPN chose among `offering`.
    private func secureDial(offering: [String]) throws -> (FileDescriptor, String?) {
        // A client certificate in memory: the kubeconfig's, else the exec plugin's.
        var certificate: (certificate: [UInt8], key: [UInt8])?
        if let data = options.tls.clientCertificateData, let key = options.tls.clientKeyData {
            certificate = (data, key)
        } else if options.tls.clientCertificateFile == nil, let plugin = execPlugin {
            let credential = try plugin.credential()
            if let data = credential.clientCertificateData, let key = credential.clientKeyData {
                certificate = (Array(data.utf8), Array(key.utf8))
            }
        }
        let tcp = try dial()
        do {
            let context = try TLSContext.client(certificateAuthorityFile: options.tls.certificateAuthorityFile,
                                                clientCertificateFile: options.tls.clientCertificateFile,
                                                clientKeyFile: options.tls.clientKeyFile,
                                                insecureSkipVerify: options.tls.insecureSkipVerify,
                                                cipherList: options.tls.cipherList,
                                                certificateAuthorityData: options.tls.certificateAuthorityData,
                                                clientCertificateData: certificate?.certificate,
                                                clientKeyData: certificate?.key, alpn: offering)
            let established = try TLSClientHandshake.perform(fd: tcp, context: context,
                                                             serverName: options.tls.serverName ?? server.host,
                                                             timeoutSeconds: options.upgradeTimeoutSeconds)
            // A server without ALPN speaks HTTP/1.1 (kubectl's upgrade connections offer none).
            guard let alpn = established.alpn ?? (offering.contains("http/1.1") ? "http/1.1" : nil), offering.contains(alpn) else {
                throw ForwardError(!offering.contains("http/1.1")
                    ? "the relay did not agree to HTTP/2 over TLS (ALPN \(established.alpn ?? "none")): is it a portforward relay?"
                    : "the relay did not agree to \(offering.joined(separator: " or ")) over TLS (ALPN \(established.alpn ?? "none"))")
            }
            let pump = TLSConnection(established: established, reactor: reactor, peer: server.authority, deadlineSeconds: 2)
            pump.log = { [unowned self, unowned pump] line in
                // A draining connection's pump speaks of its own connection, not the session's.
                if self.tls === pump { self.tlsFailure = line }
                self.log?(line)
            }
            tls = pump
            return (try pump.openInner(), alpn)
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
        let request = Array(HTTPText.upgradeRequest(path: forwardPath, authority: server.authority,
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
        throw refusal(head, body: bytes[head.length...].prefix(length))
    }

    /// The error an answer other than `101` to an upgrade makes, from its head and body.
    private func refusal(_ head: ResponseHead, body bytes: some Collection<UInt8>) -> ForwardError {
        var body = String(decoding: bytes.prefix(4096), as: UTF8.self).trimmed
            .split(separator: "\n").first.map(String.init) ?? ""
        // A relay's refusals are one line of text/plain, or a Kubernetes Status (401, 403);
        // anything else is not a relay.
        var plain = head.header("content-type")?.hasPrefix("text/plain") ?? false
        if body.hasPrefix("Client sent an HTTP request to an HTTPS server") {
            return ForwardError("\(options.server) serves TLS, not plain HTTP (it answered \(head.status): \(body)): use https://")
        }
        if head.header("content-type")?.hasPrefix("application/json") ?? false, let message = Refusal.statusMessage(body) {
            body = message
            plain = true
        }
        if plain && !body.isEmpty && Refusal.textIsMessage(status: head.status) { return ForwardError(body, status: head.status) }
        return ForwardError("\(options.server) answered \(head.status) to the upgrade"
                            + (plain && !body.isEmpty ? ": \(body)" : " of \(forwardPath) (is it a portforward relay or an API server?)"),
                            status: head.status)
    }

    // MARK: SPDY and the WebSocket tunnel: HTTP/1.1 first

    /// The connection on `fd` speaks HTTP/1.1 until its upgrade: the pod is read on it (`readPod`),
    /// then the upgrade asked for (`upgradeToSPDY`).
    private func startHTTP1(_ fd: FileDescriptor, speaking: WireProtocol) {
        self.speaking = speaking
        connection = nil
        exchange = HTTPExchange(fd: fd, reactor: reactor)
    }

    /// The head of an HTTP/1.1 request of ours; with a bearer token when there is one.
    private func requestHead(_ method: String, _ path: String, _ fields: [(String, String)]) -> String {
        var text = "\(method) \(path) HTTP/1.1\r\nHost: \(server.authority)\r\nUser-Agent: portforward\r\n"
        for (name, value) in fields { text += "\(name): \(value)\r\n" }
        if let token = bearer() { text += "Authorization: Bearer \(token)\r\n" }
        return text + "\r\n"
    }

    private var exchangeTimeoutText: String {
        "\(options.server) did not answer within \(options.upgradeTimeoutSeconds.formatted1) s"
    }

    private func readPod(on exchange: HTTPExchange) {
        let dial = generation
        let request = requestHead("GET", podPath, [("Accept", "application/json")])
        exchange.send(request, timeoutSeconds: options.upgradeTimeoutSeconds, timeoutText: exchangeTimeoutText) { [unowned self] outcome in
            guard self.generation == dial, self.phase == .checking else { return }
            switch outcome {
            case .failed(let reason):
                self.dialFailed(ForwardError("cannot read pod \(self.podName) from \(self.options.server): \(reason)"))
            case .answered(let head, let body, _):
                // The server keeps the connection for no more requests (the relay's
                // --max-api-requests, a pod read again for a minute): the next goes on a new one.
                if head.fields.lists("connection", "close") { self.closeExchange() }
                self.podStatus = head.status
                self.podBody = body
                self.podStream = nil
                self.podAnswered(reset: false)
            }
        }
    }

    /// The pod is Running: the upgrade (SPDY, or the WebSocket tunnel) on the same connection; the
    /// session is ready once it is answered `101`.
    private func upgradeToSPDY(then pod: PodDescription) {
        guard let exchange = exchange ?? redialHTTP1() else { return }
        let dial = generation
        let request: String
        var key = ""
        if speaking == .websocket {
            var nonce = [UInt8](repeating: 0, count: 16)
            for index in nonce.indices { nonce[index] = .random(in: 0...255) }
            key = Base64.encode(nonce)
            request = requestHead("GET", forwardPath, [
                ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", WebSocketHandshake.version),
                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Protocol", TunnelSubprotocol.spdy),
            ])
        } else {
            request = requestHead("POST", forwardPath, [
                ("Content-Length", "0"), ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "portforward.k8s.io"),
            ])
        }
        exchange.send(request, timeoutSeconds: options.upgradeTimeoutSeconds, timeoutText: exchangeTimeoutText) { [unowned self] outcome in
            guard self.generation == dial, self.phase == .checking else { return }
            switch outcome {
            case .failed(let reason):
                self.dialFailed(ForwardError("\(self.options.server) did not complete the upgrade: \(reason)"))
            case .answered(let head, let body, let rest):
                let upgraded = self.speaking == .websocket
                    ? head.status == 101 && head.header("sec-websocket-accept") == WebSocketHandshake.acceptKey(for: key)
                        && head.header("sec-websocket-protocol") == TunnelSubprotocol.spdy
                    : head.status == 101 && head.fields.lists("upgrade", "spdy/3.1")
                if upgraded {
                    if self.options.wireProtocol == .auto { self.settled = self.speaking }
                    return self.startSPDY(exchange.fd, initial: rest, pod: pod)
                }
                self.closeExchange()
                // The server no longer agrees to what it did (not a 401, 403 or 404, which are
                // about the caller or the pod): the next dial probes in full.
                if head.status == 101 || ForwardError.allowsFallback(head.status) { self.settled = nil }
                if self.speaking == .websocket && self.options.wireProtocol == .auto {
                    // kubectl's fallback (client-go fallback_dialer.go): anything but the tunnel's
                    // 101 means plain SPDY, on a new connection.
                    self.log?("WebSocket upgrade answered \(head.status): trying plain SPDY")
                    self.speaking = .spdy
                    return self.upgradeToSPDY(then: pod)
                }
                self.dialFailed(head.status == 101
                    ? ForwardError("\(self.options.server) answered 101 without agreeing to \(self.speaking == .websocket ? TunnelSubprotocol.spdy : "SPDY/3.1")")
                    : self.refusal(head, body: body))
            }
        }
    }

    private func startSPDY(_ fd: FileDescriptor, initial: [UInt8], pod: PodDescription) {
        exchange = nil
        let session: SPDYClientSession
        do {
            session = try SPDYClientSession(fd: fd, reactor: reactor, pipes: pipes, overWebSocket: speaking == .websocket,
                                            keepalive: options.keepalive, peer: server.authority)
        } catch {
            reactor.close(fd)
            return dialFailed(error)
        }
        spdy = session
        log?("session to \(options.server): \(speaking.name)")
        // The local connections open at the drop, named before the tunnels end.
        session.onClosing = { [unowned self] in self.noteResets() }
        session.onClosed = { [unowned self, unowned session] reason in
            if self.spdy === session { self.spdy = nil }
            self.connectionClosed(reason)
        }
        initial.withUnsafeBytes { session.start(initial: $0) }
        podReady(pod)
    }

    /// A new HTTP/1.1 connection for the pod read or the upgrade, when the server closed (or
    /// refused an upgrade on) the last one; nil when the dial failed (and `dialFailed` said so).
    private func redialHTTP1() -> HTTPExchange? {
        do {
            startHTTP1(server.secure ? try secureDial(offering: ["http/1.1"]).0 : try dial(), speaking: speaking)
        } catch {
            dialFailed(error)
            return nil
        }
        return exchange
    }

    private func closeExchange() {
        guard let exchange else { return }
        self.exchange = nil
        exchange.cancel()
        reactor.close(exchange.fd)
    }

    /// A dial that failed after it was made (the pod read or the upgrade on HTTP/1.1): at start
    /// the client ends with one line; later it is a failed re-dial (a 404: the pod is missing).
    private func dialFailed(_ error: Error) {
        closeExchange()
        guard everReady else { return fatal(ForwardError.line(error)) }
        phase = .lost
        if let error = error as? ForwardError, error.status == 404 { return podUnavailable(error.description, gone: true) }
        failedDials += 1
        log?("re-dial \(failedDials) failed: \(error)")
        scheduleRedial()
    }

    private func openListeners(_ specs: [PortSpec]) throws {
        // Each address once, as kubectl's parseAddresses: localhost is 127.0.0.1 and ::1 (either
        // may fail alone, a host without IPv6); the same address twice (`localhost,127.0.0.1`,
        // `::1,0::1`) would fail to bind the second time. An address named on its own must be
        // bound, even when localhost names it too.
        var ips: [(ip: String, key: String, required: Bool)] = []
        for host in options.addresses {
            for ip in host == "localhost" ? ["127.0.0.1", "::1"] : [host] {
                guard let address = SocketAddress(ip: ip, port: 0) else {
                    throw ForwardError("invalid address \"\(ip)\": expected localhost or a numeric IP address")
                }
                let key = "\(address)"
                if let index = ips.firstIndex(where: { $0.key == key }) {
                    ips[index].required = ips[index].required || host != "localhost"
                } else {
                    ips.append((ip, key, host != "localhost"))
                }
            }
        }
        for (request, spec) in specs.enumerated() {
            var chosen = spec.local
            var bound = 0
            var failures: [String] = []
            for (ip, _, required) in ips {
                let address = SocketAddress(ip: ip, port: chosen)!
                do {
                    let fd = try Sockets.listen(address)
                    let local = Sockets.localAddress(fd)
                    chosen = local.port
                    // The port bound (a `:REMOTE` spec picks one): "Handling connection for" names it, as kubectl does.
                    listeners.append((fd, PortSpec(local: chosen, remote: spec.remote), request))
                    bound += 1
                    self.print("Forwarding from \(local) -> \(spec.remote)")
                } catch {
                    if required {
                        throw ForwardError("unable to listen on port \(spec.local == 0 ? chosen : spec.local): \(error)")
                    }
                    failures.append("\(error)")
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
        guard phase != .stopping else {
            reactor.close(client)
            return
        }
        let spec = listeners[Int(completion.tag)].spec
        guard phase == .ready, hasSession else {
            guard options.reconnect.enabled else {
                reactor.close(client)
                return
            }
            // No session now: wait (bounded) for the next one.
            waiting.append((client, spec, Clock.nanoseconds()))
            armSweep()
            return
        }
        openStream(client, spec: spec)
    }

    /// Whether there is a session to open streams on.
    private var hasSession: Bool {
        if let spdy { return !spdy.isClosed }
        if let connection { return !connection.isClosed }
        return false
    }

    private func openStream(_ client: FileDescriptor, spec: PortSpec) {
        if let spdy { return openPair(spdy, client, spec: spec) }
        guard let connection else { return reactor.close(client) }
        self.print("Handling connection for \(spec.local)")
        let carrier = HTTP2Stream(connection: connection)
        let tunnel = Tunnel(transport: carrier, reactor: reactor, pipes: pipes)
        carrier.carry(tunnel)
        do {
            var headers = [
                (":method", "POST"), (":scheme", server.secure ? "https" : "http"), (":authority", server.authority),
                (":path", forwardPath), ("port", "\(spec.remote)"),
            ]
            if let token = bearer() { headers.append(("authorization", "Bearer \(token)")) }
            carrier.id = try connection.session.submitRequest(headers, body: carrier)
        } catch {
            printError("error: forwarding port \(spec.remote) to pod \(podName): \(error)")
            // Never opened: the tunnel ends here (no stream to reset), which cuts its link to the
            // carrier.
            tunnel.connectionLost()
            reactor.close(client)
            return
        }
        let key = ObjectIdentifier(tunnel)
        open[key] = spec.remote
        table.add(carrier, tunnel) { [unowned self] finished in
            // Reset by the relay mid-connection (a gateway's node gone, the pod's socket reset):
            // one line, as for the connections a lost session resets.
            if self.open.removeValue(forKey: key) != nil, let code = finished.resetByPeer, self.phase != .stopping {
                self.printError("Connection for port \(spec.remote) reset by the relay (\(Session.errorName(code)))")
            }
        }
        tunnel.onRejected = { [unowned self] status, reason in
            // An expired or revoked token: the plugin runs again for the next stream.
            if status == 401 { self.execPlugin?.forget() }
            self.printError("error: forwarding port \(spec.remote) to pod \(self.podName): \(reason)")
        }
        tunnel.attach(client)
        connection.flushSoon()
    }

    /// Over SPDY: an error stream and a data stream (the relay answers per pair, as a kubelet).
    private func openPair(_ spdy: SPDYClientSession, _ client: FileDescriptor, spec: PortSpec) {
        self.print("Handling connection for \(spec.local)")
        let port = spec.remote
        do {
            let tunnel = try spdy.forward(client, port: port, onRejected: { [unowned self] _, reason in
                self.printError("error: forwarding port \(port) to pod \(self.podName): \(reason)")
            }, onFinish: { [unowned self] tunnel in
                self.open[ObjectIdentifier(tunnel)] = nil
            })
            if !tunnel.finished { open[ObjectIdentifier(tunnel)] = port }
        } catch {
            printError("error: forwarding port \(port) to pod \(podName): \(error)")
            reactor.close(client)
        }
    }

    /// Closes local connections that waited longer than `sessionWaitSeconds` for a session.
    private func armSweep() {
        guard !sweepArmed else { return }
        sweepArmed = true
        after(0.1) { [weak self] in
            guard let self else { return }
            self.sweepArmed = false
            let limit = UInt64(self.options.reconnect.sessionWaitSeconds * 1e9)
            let now = Clock.nanoseconds()
            self.waiting.removeAll { entry in
                guard now - entry.since >= limit, self.phase != .stopping else { return false }
                self.printError("error: connection for port \(entry.spec.remote) closed: no session to the relay within "
                                + "\(self.options.reconnect.sessionWaitSeconds.formatted1) s (--session-wait-timeout)")
                self.reactor.close(entry.fd)
                return true
            }
            if !self.waiting.isEmpty { self.armSweep() }
        }
    }

    /// Runs `action` on the loop after `seconds`.
    private func after(_ seconds: Double, _ action: @escaping () -> Void) {
        _ = reactor.timer(nanoseconds: UInt64(max(seconds, 0.001) * 1e9), handler: Later(action), tag: 0)
    }

    /// After a re-dial: a named port is looked up again in the pod as it is now (a pod recreated
    /// under its name may number its ports otherwise), one line for each that changed; one that
    /// the pod no longer names keeps its number, with one line.
    private func refreshNamedPorts(_ pod: PodDescription) {
        for (index, request) in options.requests.enumerated() {
            guard case .name(let name) = request.remote,
                  let old = listeners.first(where: { $0.request == index })?.spec else { continue }
            guard let number = pod.ports.first(where: { $0.name == name })?.number else {
                printError("warning: pod \(podName) no longer has a port named \(name): forwarding \(old.local) -> \(old.remote) as before")
                continue
            }
            guard number != old.remote else { continue }
            for slot in listeners.indices where listeners[slot].request == index { listeners[slot].spec.remote = number }
            printError("Port \(name) of pod \(podName) is now \(number) (was \(old.remote)): forwarding \(old.local) -> \(number)")
        }
    }

    // MARK: ending

    /// Ctrl-C or SIGTERM: close the listeners and every stream, say GOAWAY, close the connection.
    public func shutdown() {
        if phase == .stopping { return }
        phase = .stopping
        for listener in listeners { reactor.close(listener.fd) }
        listeners.removeAll()
        for entry in waiting { reactor.close(entry.fd) }
        waiting.removeAll()
        for tunnel in table.tunnels { tunnel.abort() }
        for old in draining {
            for tunnel in old.table.tunnels { tunnel.abort() }
            old.connection.session.terminate()
            old.connection.flushSoon()
        }
        closeExchange()
        if let spdy, !spdy.isClosed {
            spdy.stop()
            _ = reactor.timer(nanoseconds: 2_000_000_000, handler: Later { [reactor] in reactor.stop() }, tag: 0)
            return
        }
        guard let connection, !connection.isClosed else {
            if draining.isEmpty { return reactor.stop() }
            // Their GOAWAY and resets a moment to leave.
            _ = reactor.timer(nanoseconds: 500_000_000, handler: Later { [reactor] in reactor.stop() }, tag: 0)
            return
        }
        connection.session.terminate()
        connection.flushSoon()
        // Should the relay not read the GOAWAY, stop anyway.
        _ = reactor.timer(nanoseconds: 2_000_000_000, handler: Later { [reactor] in reactor.stop() }, tag: 0)
    }

    /// The session dropped with local connections on it: their bytes cannot be replayed on the
    /// next session, so each is reset, and named in one line.
    private func noteResets() {
        guard phase != .stopping, options.reconnect.enabled, everReady else { return }
        // Not the tunnels still going on a draining HTTP/2 connection.
        let elsewhere = Set(draining.flatMap { $0.table.tunnels.map(ObjectIdentifier.init) })
        let ending = open.filter { !elsewhere.contains($0.key) }
        for port in ending.values.sorted() {
            printError("Connection for port \(port) reset: the session to the relay was lost")
        }
        for key in ending.keys { open[key] = nil }
    }

    /// The same for one HTTP/2 connection's streams (a draining connection's, or the session's).
    private func noteResets(of table: StreamTable) {
        guard phase != .stopping, options.reconnect.enabled, everReady else { return }
        let ports = table.tunnels.compactMap { open.removeValue(forKey: ObjectIdentifier($0)) }
        for port in ports.sorted() {
            printError("Connection for port \(port) reset: the session to the relay was lost")
        }
    }

    /// The relay said GOAWAY on the session's connection (it is shutting down or restarting, or
    /// ends the connection for a reason of its own): the streams it still serves go on there, no
    /// new one is opened on it (nghttp2 would refuse it, and the local connection would end
    /// without a word), and a new session is dialled at once; local connections accepted
    /// meanwhile wait for it, as after a drop.
    private func goaway(_ connection: Connection) {
        guard self.connection === connection, everReady, phase == .ready || phase == .checking else { return }
        let why = connection.session.peerGoaway ?? "GOAWAY"
        guard options.reconnect.enabled else {
            // Nothing new on it, and no next session: the listeners close (new local connections
            // are refused by the kernel, not ended in silence), and the client ends when the
            // connection does, as after a drop.
            printError("Relay at \(options.server) is going away (\(why)): no new connections (--no-reconnect); "
                       + "the client ends when the open ones have")
            for listener in listeners { reactor.close(listener.fd) }
            listeners.removeAll()
            return
        }
        draining.append((connection, table, tls))
        self.connection = nil
        tls = nil
        table = makeTable()
        if phase == .checking {
            // The re-dial reached a relay that is going away: dial again, as after a failed dial
            // (its pod read, if it is still to come, belongs to the old connection).
            podStream = nil
            phase = .lost
            failedDials += 1
            return scheduleRedial()
        }
        lostSince = Clock.nanoseconds()
        printError("Relay at \(options.server) is going away (\(why)): reconnecting; "
                   + "open connections go on there, new connections wait up to \(options.reconnect.sessionWaitSeconds.formatted1) s")
        phase = .lost
        // A relay that says GOAWAY soon after every session is re-dialled with the backoff, not at
        // round-trip speed.
        if Clock.nanoseconds() - sessionStarted < Self.shortSessionNanoseconds {
            failedDials += 1
            return scheduleRedial()
        }
        failedDials = 0
        // Not from inside the session's frame callback: the dial blocks, and makes a connection.
        after(0) { [weak self] in self?.redial() }
    }

    /// When the session of the moment's connection was set up.
    private var sessionStarted: UInt64 = 0
    /// A session that said GOAWAY sooner than this after it was set up is re-dialled with the backoff.
    static let shortSessionNanoseconds: UInt64 = 2_000_000_000

    private func connectionClosed(_ reason: String?) {
        podStream = nil
        if phase == .stopping {
            reactor.stop()
            return
        }
        let line: String
        if let tlsFailure, tlsFailure.contains("alert") {
            // TLS 1.3: the relay checks a client certificate after the client's handshake is
            // done, and its refusal arrives as an alert at the first read.
            let alert = tlsFailure.components(separatedBy: "TLS: ").last ?? tlsFailure
            line = "the relay at \(options.server) refused the TLS connection: \(alert)"
                + (alert.contains("certificate") || alert.contains("unknown ca")
                   ? " (it asks for a client certificate signed by its --client-ca-file: see --client-certificate)" : "")
        } else {
            line = "lost connection to relay at \(options.server): \(tlsFailure ?? reason ?? "closed")"
        }
        guard options.reconnect.enabled, everReady else {
            printError("error: " + line)
            exitCode = 1
            phase = .stopping
            reactor.stop()
            return
        }
        if phase == .ready {
            lostSince = Clock.nanoseconds()
            printError("Lost connection to relay at \(options.server) (\(tlsFailure ?? reason ?? "closed")): reconnecting; "
                       + "new connections wait up to \(options.reconnect.sessionWaitSeconds.formatted1) s")
        }
        phase = .lost
        failedDials = 0
        scheduleRedial()
    }

    private func scheduleRedial() {
        let wait = options.reconnect.backoff(failures: failedDials, random: .random(in: 0..<1))
        after(wait) { [weak self] in self?.redial() }
    }

    private func redial() {
        guard phase == .lost else { return }
        do {
            try connect()
        } catch let error as ForwardError where error.status == 404 {
            // The relay is back, without the pod.
            return podUnavailable(error.description, gone: true)
        } catch {
            failedDials += 1
            log?("re-dial \(failedDials) failed: \(error)")
            return scheduleRedial()
        }
        phase = .checking
        readPod()
    }
}

extension ForwardError {
    /// An error as one line (a ForwardError's text as is).
    static func line(_ error: Error) -> String {
        let text = "\(error)"
        return text.hasPrefix("error:") ? text : "error: " + text
    }
}
