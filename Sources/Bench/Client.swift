import CNGHTTP2
import HTTP2
import PortForward
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Where the bench's streams go: a relay (or a gateway), one or more pod paths on it, and the
/// pods' ports (the same on every pod).
public struct RelayTarget: Sendable {
    public var server: ServerURL
    /// The pods, each possibly on another node behind a gateway: stream `slot` goes to
    /// `paths[slot % paths.count]` (round robin; one pod: all streams to it).
    public var paths: [ForwardPath]
    public var echoPort: Int
    public var discardPort: Int
    public var sourcePort: Int

    /// The first pod (the only one, unless several were given).
    public var path: ForwardPath { paths[0] }

    public init(server: ServerURL, path: ForwardPath, echoPort: Int, discardPort: Int? = nil, sourcePort: Int? = nil) {
        self.init(server: server, paths: [path], echoPort: echoPort, discardPort: discardPort, sourcePort: sourcePort)
    }

    /// `paths` must not be empty.
    public init(server: ServerURL, paths: [ForwardPath], echoPort: Int, discardPort: Int? = nil, sourcePort: Int? = nil) {
        precondition(!paths.isEmpty, "a bench target needs at least one pod")
        self.server = server
        self.paths = paths
        self.echoPort = echoPort
        self.discardPort = discardPort ?? echoPort
        self.sourcePort = sourcePort ?? echoPort
    }

    /// Which of `count` pods stream `slot` goes to.
    public static func podIndex(slot: Int, pods count: Int) -> Int { count <= 1 ? 0 : slot % count }

    /// The pod stream `slot` goes to.
    public func path(forSlot slot: Int) -> ForwardPath { paths[Self.podIndex(slot: slot, pods: paths.count)] }

    /// `--pod` values, each NAMESPACE/NAME or a comma list of them, in order; nil when one is
    /// not NAMESPACE/NAME (or none is given). `node` goes into every path (the seed's
    /// `/proxy/nodes/NODE/...`).
    public static func pods(parsing values: [String], node: String? = nil) -> [ForwardPath]? {
        var paths: [ForwardPath] = []
        for value in values {
            for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                let parts = String(item).trimmedSpaces.split(separator: "/", omittingEmptySubsequences: false)
                guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
                paths.append(ForwardPath(node: node, namespace: String(parts[0]), pod: String(parts[1])))
            }
        }
        return paths.isEmpty ? nil : paths
    }
}

/// What carries a run's streams to the pod: HTTP/2 connections to a relay (`BenchConnection`,
/// one stream per request), or plain TCP connections to a `portforward forward` child's local
/// ports (`LocalConnections`, one connection per stream). The scenarios see only this and
/// `StreamEvents`.
protocol StreamCarrier: AnyObject {
    /// Called once ready to open streams (nil) or when it cannot be (the reason).
    var onConnect: ((String?) -> Void)? { get set }
    /// Called once when it is gone after it was ready.
    var onClose: ((String?) -> Void)? { get set }
    var openStreams: Int { get }
    func connect()
    /// Opens `stream` to `port`; its body is the stream itself (a `DataSource`).
    func open(_ stream: BenchStream, port: Int) throws
    /// The stream has more to send.
    func resume(_ stream: BenchStream)
    /// Abandons the stream (RST_STREAM CANCEL; a TCP reset); `closed` follows.
    func reset(_ stream: BenchStream)
    /// Ends everything: gracefully, or at once with `now`.
    func close(now: Bool)
}

/// What the scenario hears about a stream.
protocol StreamEvents: AnyObject {
    func responded(_ stream: BenchStream, status: Int)
    /// DATA for the stream (already acknowledged to the relay).
    func received(_ stream: BenchStream, _ bytes: UnsafeRawBufferPointer)
    /// The relay ended its side (END_STREAM).
    func ended(_ stream: BenchStream)
    /// The stream is gone: `errorCode` 0 when both sides ended it, else the RST_STREAM code
    /// (or `BenchStream.connectionLost`).
    func closed(_ stream: BenchStream, errorCode: UInt32)
}

/// Bytes moved, summed over every stream of a run.
final class Counters {
    var sent: UInt64 = 0
    var received: UInt64 = 0
}

/// One bench stream: the request body it sends (a `DataSource`) and what it has seen.
final class BenchStream: DataSource {
    /// What the request body is.
    enum Body {
        /// Bytes without end, as fast as the windows allow (upload).
        case endless
        /// Messages the scenario asks for with `send` (echo checks, request/response).
        case messages
    }

    static let connectionLost: UInt32 = .max
    /// The error code of a TCP stream closed by an error (`closeReason` says which).
    static let socketFailed: UInt32 = .max - 1

    var id: StreamID = -1
    /// The scenario's index for this stream.
    let slot: Int
    let body: Body
    unowned let connection: any StreamCarrier
    unowned let events: StreamEvents
    let counters: Counters

    var status = 0
    var isClosed = false
    /// The body of an error answer (the relay's one line), and whether the scenario was told.
    var errorBody: [UInt8] = []
    var refusalSeen = false
    /// Why a TCP stream closed, in words (nil for HTTP/2: the error code says it).
    var closeReason: String?
    /// The TCP connection carrying the stream through a forward client (nil over HTTP/2).
    var socket: StreamSocket?
    /// When the request was submitted, and when its current message was.
    var openedAt: UInt64 = 0
    var messageAt: UInt64 = 0

    // The message being sent: pattern bytes [sendNext, sendEnd).
    private var sendNext = 0
    private var sendEnd = 0
    private var endRequested = false
    private var endTaken = false
    /// Messages sent so far (each starts at a pattern offset of its own).
    private(set) var sequence = 0
    /// Echo check: how many bytes of the current message are still expected back, and where in
    /// the pattern the next expected byte is.
    private(set) var expected = 0
    private var expectedOffset = 0
    private(set) var mismatched = false
    var scratch = 0

    init(slot: Int, body: Body, connection: any StreamCarrier, events: StreamEvents, counters: Counters) {
        self.slot = slot
        self.body = body
        self.connection = connection
        self.events = events
        self.counters = counters
        super.init()
    }

    /// Sends the next message, `count` pattern bytes, ending the request body after it when
    /// `end` is set; its echo is expected back.
    func send(count: Int, end: Bool = false) {
        let offset = Pattern.offset(slot: slot, sequence: sequence)
        sequence += 1
        sendNext = offset
        sendEnd = offset + min(count, Pattern.maxMessage)
        expected += sendEnd - sendNext
        if expected == sendEnd - sendNext { expectedOffset = offset }
        endRequested = endRequested || end
        messageAt = Clock.nanoseconds()
        resume()
    }

    /// Ends the request body (END_STREAM) once what is queued has been sent.
    func finishBody() {
        endRequested = true
        resume()
    }

    private func resume() {
        guard !isClosed else { return }
        connection.resume(self)
    }

    /// Resets the stream (RST_STREAM CANCEL; a TCP reset).
    func reset() {
        guard !isClosed else { return }
        connection.reset(self)
    }

    /// Checks echoed bytes against what was sent; returns how many of them complete the current
    /// message (the rest, if any, would be unexpected).
    func check(_ bytes: UnsafeRawBufferPointer) {
        let count = min(bytes.count, expected)
        if count < bytes.count || !Pattern.matches(UnsafeRawBufferPointer(rebasing: bytes[..<count]), at: expectedOffset) {
            mismatched = true
        }
        expected -= count
        expectedOffset += count
    }

    // MARK: DataSource

    override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        switch body {
        case .endless:
            return (min(limit, Pattern.size / 2), false)
        case .messages:
            let ready = min(limit, sendEnd - sendNext)
            if ready > 0 { return (ready, endRequested && ready == sendEnd - sendNext) }
            if endRequested && !endTaken { return (0, true) }
            return (0, false)
        }
    }

    override func takePayload(count: Int) -> Payload {
        switch body {
        case .endless:
            return .memory(UnsafeRawPointer(Pattern.bytes))
        case .messages:
            if sendNext == sendEnd && endRequested { endTaken = true }
            let pointer = UnsafeRawPointer(Pattern.bytes + sendNext)
            sendNext += count
            if sendNext == sendEnd && endRequested { endTaken = true }
            return .memory(pointer)
        }
    }

    override func payloadSent(count: Int) {
        counters.sent &+= UInt64(count)
    }
}

/// One HTTP/2 connection to the relay (prior-knowledge h2c), and the streams on it.
final class BenchConnection: StreamCarrier, SessionDelegate, CompletionHandler {
    let reactor: ReactorBackend
    let target: RelayTarget
    let index: Int
    private(set) var connection: Connection?
    var session: Session? { connection?.session }
    private(set) var streams: [StreamID: BenchStream] = [:]
    private var fd: FileDescriptor = -1
    private var addresses: [SocketAddress] = []
    private var lastError = "cannot resolve"
    private let settings: SessionSettings
    private let authority: String
    /// The request path of each pod (`RelayTarget.paths`), chosen per stream by its slot.
    private let paths: [String]
    /// Called once connected (nil) or when the connection could not be made (the reason).
    var onConnect: ((String?) -> Void)?
    /// Called once when the connection is gone after it was made.
    var onClose: ((String?) -> Void)?
    var openStreams: Int { streams.count }

    init(reactor: ReactorBackend, target: RelayTarget, index: Int, settings: SessionSettings = SessionSettings()) {
        self.reactor = reactor
        self.target = target
        self.index = index
        self.settings = settings
        authority = target.server.authority
        // After the server URL's path, as the client puts it (a relay behind a prefixing proxy).
        paths = target.paths.map { target.server.target($0.path) }
    }

    func connect() {
        addresses = SocketAddress.resolve(target.server.host, port: target.server.port)
        tryNext()
    }

    private func tryNext() {
        guard !addresses.isEmpty else {
            let callback = onConnect
            onConnect = nil
            callback?("cannot reach relay at \(target.server.authority): \(lastError)")
            return
        }
        let address = addresses.removeFirst()
        do {
            fd = try Sockets.socket(for: address)
        } catch {
            lastError = "\(error)"
            return tryNext()
        }
        reactor.connect(fd, address: address, handler: self, tag: 0)
    }

    func complete(_ completion: Completion) {
        guard completion.result == 0 else {
            reactor.close(fd)
            fd = -1
            lastError = SystemError.reason(-completion.result)
            return tryNext()
        }
        do {
            let session = try Session(role: .client, settings: settings)
            let connection = Connection(fd: fd, session: session, reactor: reactor)
            session.delegate = self
            connection.onClose = { [unowned self] reason in self.lost(reason) }
            self.connection = connection
            connection.start()
        } catch {
            reactor.close(fd)
            let callback = onConnect
            onConnect = nil
            callback?("\(error)")
            return
        }
        let callback = onConnect
        onConnect = nil
        callback?(nil)
    }

    /// Opens a stream to `port` of the pod; its request body is the stream itself.
    func open(_ stream: BenchStream, port: Int) throws {
        guard let connection, !connection.isClosed else { throw BenchError("the connection to the relay is closed") }
        stream.openedAt = Clock.nanoseconds()
        stream.id = try connection.session.submitRequest([
            (":method", "POST"), (":scheme", "http"), (":authority", authority),
            (":path", paths[RelayTarget.podIndex(slot: stream.slot, pods: paths.count)]), ("port", String(port)),
        ], body: stream)
        streams[stream.id] = stream
        connection.flushSoon()
    }

    func resume(_ stream: BenchStream) {
        guard stream.id >= 0 else { return }
        session?.resume(stream.id)
        connection?.flushSoon()
    }

    func reset(_ stream: BenchStream) {
        guard stream.id >= 0 else { return }
        session?.reset(stream.id)
        connection?.flushSoon()
    }

    /// GOAWAY, then the socket closes once it is written (or at once with `now`).
    func close(now: Bool = false) {
        guard let connection, !connection.isClosed else { return }
        if now {
            connection.close(reason: nil)
        } else {
            connection.session.terminate()
            connection.flushSoon()
        }
    }

    private func lost(_ reason: String?) {
        for stream in Array(streams.values) where !stream.isClosed {
            stream.isClosed = true
            stream.events.closed(stream, errorCode: BenchStream.connectionLost)
        }
        streams.removeAll()
        let callback = onClose
        onClose = nil
        callback?(reason)
    }

    // MARK: SessionDelegate

    func session(_ session: Session, headers: HeaderList, stream: StreamID, endStream: Bool) {
        guard let bench = streams[stream] else { return }
        if bench.status == 0 {
            bench.status = Int(headers[":status"] ?? "") ?? -1
            bench.events.responded(bench, status: bench.status)
        }
        if endStream { bench.events.ended(bench) }
    }

    func session(_ session: Session, data: UnsafeRawBufferPointer, stream: StreamID) {
        session.consume(stream, data.count)
        guard let bench = streams[stream] else { return }
        bench.counters.received &+= UInt64(data.count)
        bench.events.received(bench, data)
    }

    func session(_ session: Session, endOfStream stream: StreamID) {
        guard let bench = streams[stream] else { return }
        bench.events.ended(bench)
    }

    func session(_ session: Session, closed stream: StreamID, errorCode: UInt32) {
        guard let bench = streams.removeValue(forKey: stream) else { return }
        bench.isClosed = true
        bench.events.closed(bench, errorCode: errorCode)
    }
}
