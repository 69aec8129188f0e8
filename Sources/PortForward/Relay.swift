import CNGHTTP2
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The server side: the API server's part (`/proxy/nodes/<node>/portForward/...`) and the node's
/// part (`/portForward/...`) in one process. Each accepted connection starts as a `Handshake`
/// (prior-knowledge h2c, or HTTP/1.1 with `Upgrade: h2c`) and becomes a `RelaySession`.
public final class Relay: CompletionHandler {
    public let reactor: ReactorBackend
    public let node: String
    public let registry: PodRegistry
    public let connector: Connector
    public let listenFD: FileDescriptor
    public let address: SocketAddress
    var sessions: [ObjectIdentifier: RelaySession] = [:]
    var handshakes: [ObjectIdentifier: Handshake] = [:]
    public var log: (String) -> Void = { _ in }
    /// Splice mode: pod bytes go socket -> pipe -> client connection (nil: pooled buffers).
    public var pipes: PipePool?

    public init(listen: SocketAddress, node: String, registry: PodRegistry, connector: Connector, reactor: ReactorBackend) throws {
        self.reactor = reactor
        self.node = node
        self.registry = registry
        self.connector = connector
        listenFD = try Sockets.listen(listen)
        address = Sockets.localAddress(listenFD)
    }

    public func start() {
        reactor.accept(listenFD, handler: self, tag: 0)
    }

    public func stop() {
        reactor.close(listenFD)
        for session in sessions.values { session.connection.session.terminate(); session.connection.flushSoon() }
    }

    public func complete(_ completion: Completion) {
        guard completion.result >= 0 else {
            log("accept: \(SystemError.reason(-completion.result))")
            return
        }
        let handshake = Handshake(fd: completion.result, relay: self)
        handshakes[ObjectIdentifier(handshake)] = handshake
        handshake.start()
    }

    /// Where a path leads: a pod, or the status and one line to answer with.
    public enum Target {
        case pod(Pod)
        case refused(status: Int, reason: String)
    }

    public func resolve(_ path: String) -> Target {
        guard let target = ForwardPath(parsing: path) else {
            return .refused(status: 404, reason: "unknown path \"\(path)\": expected /portForward/<namespace>/<pod> or /proxy/nodes/<node>/portForward/<namespace>/<pod>")
        }
        if let node = target.node, node != self.node {
            return .refused(status: 404, reason: "node \"\(node)\" not found")
        }
        guard let pod = registry.pod(namespace: target.namespace, name: target.pod) else {
            return .refused(status: 404, reason: "pod \"\(target.namespace)/\(target.pod)\" not found")
        }
        return .pod(pod)
    }

    func handshakeDone(_ handshake: Handshake) {
        handshakes[ObjectIdentifier(handshake)] = nil
    }

    func adopt(_ session: RelaySession) {
        sessions[ObjectIdentifier(session)] = session
    }

    func sessionClosed(_ session: RelaySession) {
        sessions[ObjectIdentifier(session)] = nil
    }
}

/// The first bytes of a connection: the HTTP/2 preface, or an HTTP/1.1 request to upgrade.
final class Handshake: CompletionHandler {
    let fd: FileDescriptor
    unowned let relay: Relay
    var bytes: [UInt8] = []
    var head: RequestHead?
    var continued = false
    static let maxHead = 16 * 1024
    static let maxBody = 16 << 20

    init(fd: FileDescriptor, relay: Relay) {
        self.fd = fd
        self.relay = relay
    }

    /// A connection must say what it is (preface, or request head and body) within this time.
    static let timeoutNanoseconds: UInt64 = 10_000_000_000
    var timer: TimerID = 0
    var done = false

    func start() {
        if timer == 0 { timer = relay.reactor.timer(nanoseconds: Self.timeoutNanoseconds, handler: self, tag: 1) }
        relay.reactor.receive(fd, handler: self, tag: 0)
    }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
            return
        }
        if completion.tag == 1 {
            return refuse(408, "Request Timeout", "no HTTP/2 preface or complete request within 10 s")
        }
        guard completion.result > 0 else {
            finish()
            relay.reactor.close(fd)
            return
        }
        let pool = relay.reactor.buffers
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: pool.pointer(completion.buffer), count: Int(completion.result)))
        pool.release(completion.buffer)
        decide()
    }

    private func decide() {
        let preface = HTTPText.clientPrefacePrefix
        if head == nil {
            let prefix = min(bytes.count, preface.count)
            if bytes[..<prefix].elementsEqual(preface[..<prefix]) {
                if bytes.count < preface.count { return start() }
                return become(upgrade: nil, initial: bytes[...])
            }
            let parsed = bytes.withUnsafeBytes { RequestHead.parse($0) }
            switch parsed {
            case .incomplete:
                if bytes.count > Self.maxHead { return refuse(431, "Request Header Fields Too Large", "request head larger than 16 KiB") }
                return start()
            case .invalid(let why):
                return refuse(400, "Bad Request", why)
            case .complete(let request):
                head = request
            }
        }
        guard let request = head else { return }
        if request.header("transfer-encoding") != nil {
            return refuse(411, "Length Required", "a request body must have a Content-Length")
        }
        let bodyLength = request.contentLength ?? 0
        if bodyLength > Self.maxBody { return refuse(413, "Content Too Large", "request body larger than 16 MiB") }
        if request.target != "*" {
            if case .refused(let status, let reason) = relay.resolve(request.target) {
                return refuse(status, status == 404 ? "Not Found" : "Bad Request", reason)
            }
        }
        guard request.asksForH2C, let settings = request.header("http2-settings").flatMap(Base64URL.decode) else {
            return refuse(426, "Upgrade Required", "this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings, or use prior knowledge")
        }
        if bytes.count < request.length + bodyLength {
            // curl holds back a large body until it is told to go on.
            if !continued, request.header("expect")?.lowercased() == "100-continue" {
                continued = true
                guard writeAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return refuse(400, "Bad Request", "write failed") }
            }
            return start()
        }
        let switching = Array(HTTPText.switchingProtocols.utf8)
        guard writeAll(switching) else {
            finish()
            relay.reactor.close(fd)
            return
        }
        become(upgrade: (request, settings, Array(bytes[request.length..<(request.length + bodyLength)])),
               initial: bytes[(request.length + bodyLength)...])
    }

    private func finish() {
        done = true
        relay.reactor.cancelTimer(timer)
        relay.handshakeDone(self)
    }

    private func become(upgrade: (RequestHead, [UInt8], [UInt8])?, initial: ArraySlice<UInt8>) {
        finish()
        do {
            let session = try RelaySession(fd: fd, relay: relay)
            relay.adopt(session)
            if let (request, settings, body) = upgrade {
                try session.connection.session.upgrade(settingsPayload: settings, headRequest: request.method == "HEAD")
                var headers = HeaderList([(":method", request.method), (":path", request.target)])
                if let port = request.header("port") { headers.fields.append(("port", port)) }
                session.upgraded(headers: headers, body: body)
            }
            initial.withUnsafeBytes { session.connection.start(initial: $0) }
        } catch {
            relay.log("session: \(error)")
            relay.reactor.close(fd)
        }
    }

    private func refuse(_ status: Int, _ phrase: String, _ reason: String) {
        finish()
        _ = writeAll(Array(HTTPText.response(status: status, reason: phrase, body: reason).utf8))
        // Unread request bytes would turn the close into a reset that loses the answer.
        Sockets.shutdownWrite(fd)
        relay.reactor.close(fd)
    }

    /// A few hundred bytes on a fresh socket: the kernel takes them at once.
    private func writeAll(_ data: [UInt8]) -> Bool {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { return false }
                offset += written
            }
            return true
        }
    }
}

/// One HTTP/2 connection on the relay: each stream with a `port` header becomes a tunnel to that
/// port of the pod its path names.
final class RelaySession: SessionDelegate, SpliceReceiver {
    let connection: Connection
    unowned let relay: Relay
    var tunnels: [StreamID: Tunnel] = [:]
    var attempts: [StreamID: ConnectAttempt] = [:]

    init(fd: FileDescriptor, relay: Relay) throws {
        self.relay = relay
        let session = try Session(role: .server)
        connection = Connection(fd: fd, session: session, reactor: relay.reactor)
        session.delegate = self
        connection.pipes = relay.pipes
        connection.spliceReceiver = self
        connection.onClose = { [unowned self] reason in self.closed(reason) }
    }

    func acceptsSplice(stream: StreamID) -> Bool { tunnels[stream]?.acceptsSplice ?? false }

    /// Stream 1 of an upgraded connection: the HTTP/1.1 request, its body already read.
    func upgraded(headers: HeaderList, body: [UInt8]) {
        if headers["port"] == nil || headers[":path"] == "*" {
            // The request only opened the session.
            try? connection.session.submitResponse(1, headers: [(":status", "200")], body: nil)
            return
        }
        let tunnel = request(headers: headers, stream: 1, endStream: false)
        tunnel?.windowed = false
        if !body.isEmpty { body.withUnsafeBytes { tunnel?.received($0) } }
        tunnel?.peerFinished()
    }

    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        _ = request(headers: headers, stream: stream, endStream: endStream)
    }

    @discardableResult
    private func request(headers: HeaderList, stream: StreamID, endStream: Bool) -> Tunnel? {
        let pod: Pod
        switch relay.resolve(headers[":path"] ?? "") {
        case .refused(let status, let reason):
            answer(stream, status: status, reason)
            return nil
        case .pod(let found):
            pod = found
        }
        guard let portText = headers["port"] else {
            answer(stream, status: 400, "missing port header")
            return nil
        }
        guard let port = Int(portText.trimmed), (1...65535).contains(port) else {
            answer(stream, status: 400, "invalid port \"\(portText)\": expected a number from 1 to 65535")
            return nil
        }
        let tunnel = Tunnel(stream: stream, connection: connection, pipes: relay.pipes)
        tunnels[stream] = tunnel
        tunnel.onFinish = { [unowned self] finished in
            if self.tunnels[finished.stream] === finished { self.tunnels[finished.stream] = nil }
        }
        if endStream { tunnel.peerFinished() }
        attempts[stream] = relay.connector.connect(pod: pod, port: port) { [unowned self] result in
            self.attempts[stream] = nil
            switch result {
            case .connected(let fd):
                if tunnel.finished {
                    self.relay.reactor.close(fd)
                    return
                }
                tunnel.attach(fd)
                try? self.connection.session.submitResponse(stream, headers: [(":status", "200")], body: tunnel)
            case .failed(let status, let reason):
                tunnel.reject()
                self.answer(stream, status: status, reason)
            }
            self.connection.flushSoon()
        }
        return tunnel
    }

    private func answer(_ stream: StreamID, status: Int, _ reason: String) {
        let body = StaticBody(reason + "\n")
        try? connection.session.submitResponse(stream, headers: [
            (":status", "\(status)"), ("content-type", "text/plain; charset=utf-8"),
        ], body: body)
        connection.flushSoon()
    }

    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        if let tunnel = tunnels[stream] {
            tunnel.received(data)
        } else {
            // A stream answered with an error: its bytes are dropped, its window reopened.
            session.consume(stream, data.count)
        }
    }

    func session(_ session: Session, endOfStream stream: StreamID) {
        tunnels[stream]?.peerFinished()
    }

    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) {
        if let attempt = attempts.removeValue(forKey: stream) { attempt.cancel() }
        tunnels[stream]?.streamClosed(errorCode: errorCode)
    }

    private func closed(_ reason: String?) {
        for attempt in attempts.values { attempt.cancel() }
        attempts.removeAll()
        for tunnel in Array(tunnels.values) { tunnel.connectionLost() }
        tunnels.removeAll()
        relay.sessionClosed(self)
    }
}
