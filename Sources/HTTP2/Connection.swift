import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Drives one `Session` over one socket with the reactor. It owns the socket: it receives into
/// pooled buffers and feeds the session, and once a turn gathers what the session produced and
/// writes it (writev, or splice for payloads waiting in pipes). One write is in flight at a time;
/// the next is gathered when it completes, so a slow peer stops the production of frames rather
/// than growing a queue.
public final class Connection: CompletionHandler, DeferredTask {
    public let fd: FileDescriptor
    public let session: Session
    public let reactor: ReactorBackend
    /// Called once, when the connection is gone (nil reason: it ended cleanly).
    public var onClose: ((String?) -> Void)?
    public private(set) var isClosed = false

    private let output = OutputQueue()
    private var writing = false
    private var scheduled = false
    /// How much may be queued for one write.
    public static let outputLimit = 2 << 20

    private enum Tag: UInt32 { case receive = 1, write, splice }

    public init(fd: FileDescriptor, session: Session, reactor: ReactorBackend) {
        self.fd = fd
        self.session = session
        self.reactor = reactor
        Sockets.noDelay(fd)
    }

    /// Starts reading; `initial` holds bytes already read from the socket (after an upgrade).
    public func start(initial: UnsafeRawBufferPointer? = nil) {
        if let initial, initial.count > 0 {
            do { try session.receive(initial) } catch {
                close(reason: "\(error)")
                return
            }
        }
        reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        flushSoon()
    }

    /// Asks for a write at the end of this loop turn.
    @inline(__always)
    public func flushSoon() {
        if scheduled || isClosed { return }
        scheduled = true
        reactor.schedule(self)
    }

    public func runDeferred() {
        scheduled = false
        guard !isClosed, !writing else { return }
        do { try session.produce(into: output, limit: Self.outputLimit) } catch {
            close(reason: "\(error)")
            return
        }
        if output.isEmpty {
            if !session.wantsRead && !session.wantsWrite { close(reason: nil) }
            return
        }
        let next = output.nextWrite()
        writing = true
        if let pipe = next.pipe {
            reactor.splice(from: pipe, to: fd, count: next.pipeCount, socket: fd, handler: self, tag: Tag.splice.rawValue)
        } else {
            reactor.writev(fd, vectors: output.vectors, count: next.vectorCount, handler: self, tag: Tag.write.rawValue)
        }
    }

    public func complete(_ completion: Completion) {
        guard !isClosed else {
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            return
        }
        switch Tag(rawValue: completion.tag) {
        case .receive:
            if completion.result <= 0 {
                close(reason: completion.result == 0 ? "connection closed by peer" : SystemError.reason(-completion.result))
                return
            }
            let bytes = UnsafeRawBufferPointer(start: reactor.buffers.pointer(completion.buffer), count: Int(completion.result))
            do { try session.receive(bytes) } catch {
                reactor.buffers.release(completion.buffer)
                close(reason: "\(error)")
                return
            }
            reactor.buffers.release(completion.buffer)
            if isClosed { return }
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
            flushSoon()
        case .write, .splice:
            writing = false
            if completion.result < 0 {
                close(reason: SystemError.reason(-completion.result))
                return
            }
            output.advance(Int(completion.result))
            flushSoon()
        case nil:
            break
        }
    }

    /// Closes the socket; everything queued is dropped.
    public func close(reason: String?) {
        if isClosed { return }
        isClosed = true
        output.discard()
        reactor.close(fd)
        let callback = onClose
        onClose = nil
        callback?(reason)
    }
}
