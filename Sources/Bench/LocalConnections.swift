import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The streams of a run through a `portforward forward` child: each one a plain TCP connection
/// to one of its local ports, on the bench's reactor. What an HTTP/2 stream would say maps as:
/// answered 200 = connected; DATA = bytes read; END_STREAM sent = `shutdown(SHUT_WR)`; END_STREAM
/// received = end of file, after which the socket closes (`closed` with 0); a reset = an error
/// (`closed` with `BenchStream.socketFailed` and the reason in words).
final class LocalConnections: StreamCarrier {
    let reactor: ReactorBackend
    let host: String
    var onConnect: ((String?) -> Void)?
    var onClose: ((String?) -> Void)?
    private var sockets: [FileDescriptor: StreamSocket] = [:]
    var openStreams: Int { sockets.count }

    init(reactor: ReactorBackend, host: String) {
        self.reactor = reactor
        self.host = host
    }

    /// Nothing to set up: each stream connects on its own.
    func connect() {
        let callback = onConnect
        onConnect = nil
        callback?(nil)
    }

    func open(_ stream: BenchStream, port: Int) throws {
        guard let address = SocketAddress(ip: host, port: port) else { throw BenchError("invalid address \(host):\(port)") }
        let fd = try Sockets.socket(for: address)
        Sockets.noDelay(fd)
        let socket = StreamSocket(fd: fd, stream: stream, carrier: self)
        stream.socket = socket
        stream.openedAt = Clock.nanoseconds()
        sockets[fd] = socket
        reactor.connect(fd, address: address, handler: socket, tag: StreamSocket.Tag.connect.rawValue)
    }

    func resume(_ stream: BenchStream) { stream.socket?.pump() }

    func reset(_ stream: BenchStream) { stream.socket?.reset() }

    /// Closes every socket, without telling the streams (the run is over).
    func close(now: Bool) {
        for socket in sockets.values { socket.drop() }
        sockets.removeAll()
    }

    fileprivate func forget(_ fd: FileDescriptor) { sockets[fd] = nil }
}

/// One stream's TCP connection: one write and one receive in flight at most.
final class StreamSocket: CompletionHandler {
    enum Tag: UInt32 { case connect = 1, receive, write }

    /// How much of the stream's body one write takes.
    private static let writeLimit = 256 * 1024

    private let fd: FileDescriptor
    /// Held until the socket closes: nothing else holds a churn stream.
    private var stream: BenchStream?
    private unowned let carrier: LocalConnections
    private var reactor: ReactorBackend { carrier.reactor }
    private var connected = false
    private var closed = false
    /// The bytes of the write in flight that are not written yet.
    private var writing: UnsafeRawPointer?
    private var writeLeft = 0
    /// The body ends after the write in flight; and it has ended (`shutdown(SHUT_WR)`).
    private var endAfterWrite = false
    private var shutDown = false

    fileprivate init(fd: FileDescriptor, stream: BenchStream, carrier: LocalConnections) {
        self.fd = fd
        self.stream = stream
        self.carrier = carrier
    }

    func complete(_ completion: Completion) {
        guard !closed, let stream else {
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            return
        }
        let result = completion.result
        switch Tag(rawValue: completion.tag) {
        case .connect:
            if result < 0 { return fail("connect to \(carrier.host): " + SystemError.reason(-result)) }
            connected = true
            stream.id = 0
            stream.status = 200
            stream.events.responded(stream, status: 200)
            if closed { return }
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
            pump()
        case .receive:
            if result < 0 { return fail("read: " + SystemError.reason(-result)) }
            if result == 0 {
                stream.events.ended(stream)
                return finish(errorCode: 0, reason: nil)
            }
            let bytes = UnsafeRawBufferPointer(start: reactor.buffers.pointer(completion.buffer), count: Int(result))
            stream.counters.received &+= UInt64(result)
            stream.events.received(stream, bytes)
            reactor.buffers.release(completion.buffer)
            if !closed { reactor.receive(fd, handler: self, tag: Tag.receive.rawValue) }
        case .write:
            if result < 0 { return fail("write: " + SystemError.reason(-result)) }
            writeLeft -= Int(result)
            writing = writing.map { $0 + Int(result) }
            stream.payloadSent(count: Int(result))
            if writeLeft > 0 { return reactor.write(fd, from: writing!, count: writeLeft, handler: self, tag: Tag.write.rawValue) }
            writing = nil
            if endAfterWrite { endBody() }
            pump()
        case nil:
            break
        }
    }

    /// Writes what the stream has ready, if no write is in flight; ends the body when it says so.
    func pump() {
        guard connected, !closed, writing == nil, !shutDown, let stream else { return }
        let (count, ends) = stream.pendingBytes(limit: Self.writeLimit)
        guard count > 0 else {
            if ends { endBody() }
            return
        }
        guard case .memory(let pointer) = stream.takePayload(count: count) else { return fail("a body from a pipe") }
        writing = pointer
        writeLeft = count
        endAfterWrite = ends
        reactor.write(fd, from: pointer, count: count, handler: self, tag: Tag.write.rawValue)
    }

    private func endBody() {
        shutDown = true
        Sockets.shutdownWrite(fd)
    }

    /// Abandons the connection with a TCP reset; `closed` comes in a later turn, as an HTTP/2
    /// stream's would after RST_STREAM.
    func reset() {
        guard !closed else { return }
        Sockets.resetOnClose(fd)
        let stream = self.stream
        finish(errorCode: BenchStream.socketFailed, reason: "reset by the bench", tell: false)
        reactor.after(0) { stream.map { $0.events.closed($0, errorCode: BenchStream.socketFailed) } }
    }

    private func fail(_ reason: String) {
        finish(errorCode: BenchStream.socketFailed, reason: reason)
    }

    private func finish(errorCode: UInt32, reason: String?, tell: Bool = true) {
        guard !closed, let stream else { return }
        drop()
        carrier.forget(fd)
        stream.closeReason = reason
        if tell { stream.events.closed(stream, errorCode: errorCode) }
    }

    /// Closes the socket (what is pending on it is cancelled) and lets go of the stream.
    fileprivate func drop() {
        guard !closed else { return }
        closed = true
        reactor.close(fd)
        stream?.isClosed = true
        stream?.socket = nil
        stream = nil
    }
}
