import CLinuxShim
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
    public let limits: RelayLimits
    public let settings: SessionSettings
    var sessions: [ObjectIdentifier: RelaySession] = [:]
    var handshakes: [ObjectIdentifier: Handshake] = [:]
    /// Protocol and connection errors, one line each, rate-limited (`-v`).
    public var log: (String) -> Void = { _ in } {
        didSet { limitedLog = LogLimiter(sink: log) }
    }
    private(set) var limitedLog = LogLimiter { _ in }
    /// Splice mode: pod bytes go socket -> pipe -> client connection (nil: pooled buffers).
    public var pipes: PipePool?
    /// Streams being connected or forwarded (or waiting to be), across every session.
    var streams = 0
    /// Streams and sessions that ended since the last `trimMemory`.
    var endedSinceTrim = 0
    let opens: OpenScheduler
    /// Stream-open buckets of the peer addresses that have connections, and how many each has.
    private var peers: [String: (bucket: TokenBucket, connections: Int)] = [:]
    private let housekeeping = Housekeeping()

    public init(listen: SocketAddress, node: String, registry: PodRegistry, connector: Connector, reactor: ReactorBackend,
                limits: RelayLimits = RelayLimits(), settings: SessionSettings = SessionSettings()) throws {
        self.reactor = reactor
        self.node = node
        self.registry = registry
        self.connector = connector
        self.limits = limits
        var settings = settings
        settings.maxConcurrentStreams = limits.maxStreamsPerConnection
        settings.maxHeaderListSize = limits.maxHeaderListSize
        settings.streamResetRate = UInt64(limits.streamResets.rate)
        settings.streamResetBurst = UInt64(limits.streamResets.burst)
        self.settings = settings
        opens = OpenScheduler(reactor: reactor)
        listenFD = try Sockets.listen(listen)
        address = Sockets.localAddress(listenFD)
        housekeeping.relay = self
    }

    public func start() {
        reactor.accept(listenFD, handler: self, tag: 0)
        housekeeping.arm()
    }

    public func stop() {
        reactor.close(listenFD)
        housekeeping.stop()
        for session in sessions.values { session.connection.session.terminate(); session.connection.flushSoon() }
    }

    public func complete(_ completion: Completion) {
        guard completion.result >= 0 else {
            limitedLog("accept: \(SystemError.reason(-completion.result))")
            return
        }
        let fd = completion.result
        if handshakes.count + sessions.count >= limits.maxConnections {
            limitedLog("connection refused: \(limits.maxConnections) connections open (--max-connections)")
            Sockets.resetOnClose(fd)
            reactor.close(fd)
            return
        }
        let peer = Sockets.peerAddress(fd)
        let handshake = Handshake(fd: fd, peer: peer.length > 0 ? peer.ip : "?", relay: self)
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
            return .refused(status: 404, reason: "unknown path \"\(path.prefix(256))\": expected /portForward/<namespace>/<pod> or /proxy/nodes/<node>/portForward/<namespace>/<pod>")
        }
        // Names come from the peer: the answer (and the log line) quotes at most a name's length.
        if let node = target.node, node != self.node {
            return .refused(status: 404, reason: "node \"\(node.prefix(253))\" not found")
        }
        guard let pod = registry.pod(namespace: target.namespace, name: target.pod) else {
            return .refused(status: 404, reason: "pod \"\(target.namespace.prefix(63))/\(target.pod.prefix(253))\" not found")
        }
        return .pod(pod)
    }

    func handshakeDone(_ handshake: Handshake) {
        handshakes[ObjectIdentifier(handshake)] = nil
    }

    func adopt(_ session: RelaySession) {
        sessions[ObjectIdentifier(session)] = session
        peers[session.peer, default: (TokenBucket(limits.peerStreamOpenRate), 0)].connections += 1
    }

    func sessionClosed(_ session: RelaySession, reason: String?) {
        guard sessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
        endedSinceTrim += 1
        if let reason, reason != Connection.closedByPeer { limitedLog("session \(session.peer): \(reason)") }
        if let entry = peers[session.peer] {
            peers[session.peer] = entry.connections > 1 ? (entry.bucket, entry.connections - 1) : nil
        }
    }

    /// The peer's stream-open bucket: whether a token is there, and how long until one is.
    func peerTokenWait(_ peer: String, now: UInt64) -> UInt64 {
        peers[peer]?.bucket.wait(now: now) ?? 0
    }

    func takePeerToken(_ peer: String, now: UInt64) {
        peers[peer]?.bucket.take(now: now)
    }

    /// Gives memory back after a burst: free pool buffers and the heap's free pages.
    func trimMemory() {
        let returned = reactor.buffers.trim()
        // malloc_trim walks the heap: only after something ended (buffers came back, streams or
        // sessions went away), not on every tick of a steady relay.
        if returned > 0 || endedSinceTrim > 0 { _ = pf_malloc_trim(0) }
        endedSinceTrim = 0
    }
}

/// Every 2 s: hand memory a burst left behind back to the system.
private final class Housekeeping: CompletionHandler {
    weak var relay: Relay?
    private var timer: TimerID = 0
    private var stopped = false
    static let intervalNanoseconds: UInt64 = 2_000_000_000

    func arm() {
        guard let relay, !stopped else { return }
        timer = relay.reactor.timer(nanoseconds: Self.intervalNanoseconds, handler: self, tag: 0)
    }

    func stop() {
        stopped = true
        relay?.reactor.cancelTimer(timer)
    }

    func complete(_ completion: Completion) {
        relay?.trimMemory()
        arm()
    }
}

/// Stream opens wait here, per session, and are started at the end of a turn in rounds: each
/// session with waiting opens gets a few per round, within the token buckets of its connection
/// and of its peer address, and a turn starts no more than `perTurn` (the rest go on next turn,
/// after the reactor has polled). So a client that floods opens (or opens and resets, the rapid
/// reset attack) waits behind its own opens, and a stream reset while it waits costs nothing.
final class OpenScheduler: CompletionHandler, DeferredTask {
    let reactor: ReactorBackend
    private var waiting: [RelaySession] = []
    /// A run is due at the end of this turn.
    private var deferred = false
    /// A run is due by timer (next turn, or when a token is): its deadline, 0 when none.
    private var timer: TimerID = 0
    private var timerDeadline: UInt64 = 0
    static let perRound = 16
    static let perTurn = 256

    init(reactor: ReactorBackend) { self.reactor = reactor }

    /// `session` has a new open waiting.
    func enqueue(_ session: RelaySession) {
        if !session.scheduled {
            session.scheduled = true
            waiting.append(session)
        }
        if !deferred {
            deferred = true
            reactor.schedule(self)
        }
    }

    func runDeferred() {
        deferred = false
        run()
    }

    func complete(_ completion: Completion) {
        timerDeadline = 0
        run()
    }

    /// A run after `nanoseconds`, unless one is due sooner.
    private func arm(after nanoseconds: UInt64) {
        let deadline = Clock.nanoseconds() + nanoseconds
        if timerDeadline != 0 {
            if timerDeadline <= deadline { return }
            reactor.cancelTimer(timer)
        }
        timerDeadline = deadline
        timer = reactor.timer(nanoseconds: nanoseconds, handler: self, tag: 0)
    }

    private func run() {
        var started = 0
        var shortestWait = UInt64.max
        while started < Self.perTurn && !waiting.isEmpty {
            var progressed = false
            var index = 0
            while index < waiting.count && started < Self.perTurn {
                let session = waiting[index]
                let (count, wait) = session.startWaitingOpens(limit: min(Self.perRound, Self.perTurn - started))
                started += count
                if count > 0 { progressed = true }
                if !session.hasWaitingOpens {
                    session.scheduled = false
                    waiting.remove(at: index)
                    continue
                }
                if wait > 0 { shortestWait = min(shortestWait, wait) }
                index += 1
            }
            if !progressed { break }
        }
        if waiting.isEmpty { return }
        // More than a turn's worth: go on after the reactor has polled; else when a token is due.
        arm(after: started >= Self.perTurn ? 0 : min(shortestWait, 1_000_000_000))
    }
}

/// The first bytes of a connection: the HTTP/2 preface, or an HTTP/1.1 request to upgrade.
final class Handshake: CompletionHandler {
    let fd: FileDescriptor
    let peer: String
    unowned let relay: Relay
    var bytes: [UInt8] = []
    var head: RequestHead?
    var scanned = 0
    var continued = false

    init(fd: FileDescriptor, peer: String, relay: Relay) {
        self.fd = fd
        self.peer = peer
        self.relay = relay
    }

    var timer: TimerID = 0
    var done = false

    func start() {
        if timer == 0 {
            timer = relay.reactor.timer(nanoseconds: UInt64(relay.limits.handshakeTimeout * 1e9), handler: self, tag: 1)
        }
        relay.reactor.receive(fd, handler: self, tag: 0)
    }

    func complete(_ completion: Completion) {
        if done {
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
            return
        }
        if completion.tag == 1 {
            return refuse(408, "no HTTP/2 preface or complete request within \(relay.limits.handshakeTimeout.formatted1) s")
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
            let limits = HeadLimits(maxBytes: relay.limits.maxRequestHead)
            switch bytes.withUnsafeBytes({ RequestHead.parse($0, limits: limits, scannedBefore: scanned) }) {
            case .incomplete(let upTo):
                scanned = upTo
                return start()
            case .invalid(let status, let reason):
                return refuse(status, reason)
            case .complete(let request):
                head = request
            }
        }
        guard let request = head else { return }
        if request.header("transfer-encoding") != nil {
            return refuse(411, "a request body must have a Content-Length")
        }
        let bodyLength = request.contentLength
        let maxBody = relay.limits.maxUpgradeBody(relay.settings)
        if bodyLength > maxBody { return refuse(413, "request body larger than \(maxBody) bytes (the stream window)") }
        if request.target != "*" {
            if case .refused(let status, let reason) = relay.resolve(request.target) {
                return refuse(status, reason)
            }
        }
        guard request.asksForH2C, let settings = request.header("http2-settings").flatMap(Base64URL.decode) else {
            return refuse(426, "this relay speaks HTTP/2: send Upgrade: h2c with HTTP2-Settings, or use prior knowledge")
        }
        if bytes.count < request.length + bodyLength {
            // curl holds back a large body until it is told to go on.
            if !continued, request.header("expect")?.lowercased() == "100-continue" {
                continued = true
                guard writeAll(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) else { return refuse(400, "write failed") }
            }
            return start()
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
        let session: RelaySession
        do {
            session = try RelaySession(fd: fd, peer: peer, relay: relay)
        } catch {
            finish()
            relay.limitedLog("session: \(error)")
            relay.reactor.close(fd)
            return
        }
        if let (request, settings, body) = upgrade {
            // The settings are checked before the answer: a payload nghttp2 refuses is a 400,
            // and nothing is upgraded.
            do {
                try session.connection.session.upgrade(settingsPayload: settings, headRequest: request.method == "HEAD")
            } catch {
                return refuse(400, "invalid HTTP2-Settings: \(error)")
            }
            guard writeAll(Array(HTTPText.switchingProtocols.utf8)) else {
                finish()
                relay.reactor.close(fd)
                return
            }
            finish()
            relay.adopt(session)
            var headers = HeaderList([(":method", request.method), (":path", request.target)])
            for port in request.fields.all("port") { headers.fields.append(("port", port)) }
            session.upgraded(headers: headers, body: body)
        } else {
            finish()
            relay.adopt(session)
        }
        initial.withUnsafeBytes { session.connection.start(initial: $0) }
    }

    private func refuse(_ status: Int, _ reason: String) {
        finish()
        relay.limitedLog("request from \(peer) refused with \(status): \(reason)")
        _ = writeAll(Array(HTTPText.response(status: status, reason: HTTPStatus.phrase(status), body: reason).utf8))
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
    let peer: String
    var tunnels: [StreamID: Tunnel] = [:]
    var attempts: [StreamID: ConnectAttempt] = [:]

    // Stream opens waiting for their turn (OpenScheduler), oldest first.
    private struct WaitingOpen {
        var tunnel: Tunnel
        var pod: Pod
        var port: Int
    }
    private var waitingOpens: [WaitingOpen] = []
    private var waitingHead = 0
    var scheduled = false
    private var bucket: TokenBucket

    init(fd: FileDescriptor, peer: String, relay: Relay) throws {
        self.relay = relay
        self.peer = peer
        bucket = TokenBucket(relay.limits.streamOpenRate)
        let session = try Session(role: .server, settings: relay.settings)
        connection = Connection(fd: fd, session: session, reactor: relay.reactor,
                                maxHeldBytes: relay.limits.maxHeldBytesPerConnection)
        session.delegate = self
        session.log = { [unowned relay] line in relay.limitedLog("\(peer): \(line)") }
        connection.pipes = relay.pipes
        connection.spliceReceiver = self
        connection.maxQueuedFrames = relay.limits.maxQueuedFrames
        connection.keepalive = relay.limits.keepalive.interval > 0 ? relay.limits.keepalive : nil
        connection.idleTimeoutSeconds = relay.limits.idleTimeout
        connection.hasStreams = { [unowned self] in !self.tunnels.isEmpty }
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
        if tunnels[stream] != nil {
            // nghttp2 passes a second header block only as trailers (handled by the session);
            // anything else on an answered stream is not a new request.
            session.reset(stream, code: NGHTTP2_PROTOCOL_ERROR.rawValue)
            return
        }
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
        let port: Int
        switch PortHeader.parse(headers.all("port")) {
        case .failure(let error):
            answer(stream, status: 400, error.description)
            return nil
        case .success(let value):
            port = value
        }
        if relay.streams >= relay.limits.maxStreams {
            answer(stream, status: 503, "the relay holds \(relay.limits.maxStreams) streams (--max-streams): try again later")
            return nil
        }
        let tunnel = Tunnel(stream: stream, connection: connection, pipes: relay.pipes)
        tunnels[stream] = tunnel
        relay.streams += 1
        tunnel.onFinish = { [unowned self] finished in
            self.relay.streams -= 1
            self.relay.endedSinceTrim += 1
            if self.tunnels[finished.stream] === finished { self.tunnels[finished.stream] = nil }
        }
        if endStream { tunnel.peerFinished() }
        waitingOpens.append(WaitingOpen(tunnel: tunnel, pod: pod, port: port))
        relay.opens.enqueue(self)
        return tunnel
    }

    var hasWaitingOpens: Bool { waitingHead < waitingOpens.count }

    /// Starts up to `limit` waiting opens within the token buckets; returns how many started and,
    /// when a bucket stopped it, how long until a token.
    func startWaitingOpens(limit: Int) -> (started: Int, wait: UInt64) {
        var started = 0
        let now = Clock.nanoseconds()
        while started < limit && waitingHead < waitingOpens.count {
            let open = waitingOpens[waitingHead]
            if open.tunnel.finished {
                // Reset while it waited: nothing to undo.
                waitingHead += 1
                continue
            }
            let wait = max(bucket.wait(now: now), relay.peerTokenWait(peer, now: now))
            if wait > 0 { compact(); return (started, wait) }
            bucket.take(now: now)
            relay.takePeerToken(peer, now: now)
            waitingHead += 1
            started += 1
            connect(open)
        }
        compact()
        return (started, 0)
    }

    private func compact() {
        if waitingHead == waitingOpens.count {
            waitingOpens.removeAll(keepingCapacity: waitingOpens.count <= 1024)
            waitingHead = 0
        } else if waitingHead > 1024 {
            waitingOpens.removeFirst(waitingHead)
            waitingHead = 0
        }
    }

    private func connect(_ open: WaitingOpen) {
        let stream = open.tunnel.stream
        let tunnel = open.tunnel
        var answered = false
        let attempt = relay.connector.connect(pod: open.pod, port: open.port) { [unowned self] result in
            answered = true
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
        // A connector may answer at once (a namespace that cannot be entered): nothing to keep then.
        if !answered { attempts[stream] = attempt }
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
        waitingOpens.removeAll()
        waitingHead = 0
        relay.sessionClosed(self, reason: reason)
    }
}

/// The `port` header of a request: one value, a decimal number 1-65535 without sign or leading zero.
public enum PortHeader {
    public static func parse(_ values: [String]) -> Result<Int, HeadError> {
        guard let text = values.first else { return .failure(HeadError("missing port header")) }
        if values.count > 1 { return .failure(HeadError("more than one port header")) }
        let digits = text.utf8
        guard !digits.isEmpty, digits.count <= 5, digits.allSatisfy({ $0 >= 48 && $0 <= 57 }), digits.first != 48,
              let port = Int(text), port <= 65535 else {
            return .failure(HeadError("invalid port \"\(text.prefix(32))\": expected a number from 1 to 65535"))
        }
        return .success(port)
    }
}

/// Reason phrases for the statuses the relay answers with.
public enum HTTPStatus {
    public static func phrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 400: return "Bad Request"
        case 404: return "Not Found"
        case 408: return "Request Timeout"
        case 411: return "Length Required"
        case 413: return "Content Too Large"
        case 426: return "Upgrade Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return "Error"
        }
    }
}
