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
    /// The pooled buffer whose bytes the session is being fed (none otherwise): a stream may take
    /// a hold on it to write its DATA straight from it.
    public private(set) var receivingBuffer = BufferPool.none
    private var writing = false
    private var scheduled = false
    /// The close reason when the peer closed the socket without GOAWAY.
    public static let closedByPeer = "connection closed by peer"
    /// How much may be queued for one write.
    public static let outputLimit = 2 << 20

    private enum Tag: UInt32 { case receive = 1, write, splice, spliceIn, header, tick }

    // Liveness and bounds.
    /// PING after `interval` seconds without a byte from the peer; close when no answer came
    /// within `timeout` (nil: never).
    public var keepalive: Keepalive?
    /// Close (after GOAWAY) when the session has had no stream for this long (0: never);
    /// `hasStreams` says whether it has one.
    public var idleTimeoutSeconds: Double = 0
    public var hasStreams: (() -> Bool)?
    /// Stop reading while nghttp2 holds more frames than this for a peer that does not read them.
    public var maxQueuedFrames = 4096
    /// Bytes the connection's streams hold in memory or pipes (received and not yet written to
    /// their sockets, or read from them and not yet sent): over the limit, the connection stops
    /// reading, and streams stop reading their sockets.
    public let held: HeldBytes
    private var lastReceived: UInt64 = 0
    private var pingSent: UInt64 = 0
    private var idleSince: UInt64 = 0
    private var tickTimer: TimerID = 0
    /// Set when the connection is ending on its own (no PING answer, idle): the close reason.
    private var closingReason: String?
    /// A receive is not issued while the peer is not taking what it was sent.
    private var receivePaused = false
    private var receiving = false

    // Receiving DATA payloads by splice: the payload goes socket -> pipe, and nghttp2 is fed as
    // many placeholder bytes (zeros) for its framing and flow control; the stream's tunnel
    // claims the pipe when nghttp2 hands it the placeholders.
    /// Whether a stream's DATA may be spliced to it; nil: never splice.
    public weak var spliceReceiver: SpliceReceiver?
    public var pipes: PipePool?
    private var tracker: FrameTracker
    private var inPipe: Pipe?
    private var placeholderPipe: Pipe?
    /// After a spliced payload, the next frame header is read alone, so that the payload after it
    /// can be spliced whole instead of half read by a greedy receive.
    private var headerNext = false
    private let header = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
    /// Payloads smaller than this are read: a splice costs two system calls.
    public static let spliceThreshold = 16 * 1024

    public init(fd: FileDescriptor, session: Session, reactor: ReactorBackend, maxHeldBytes: Int = 256 << 20) {
        self.fd = fd
        self.session = session
        self.reactor = reactor
        held = HeldBytes(limit: maxHeldBytes)
        tracker = FrameTracker(expectsPreface: session.role == .server)
        Sockets.noDelay(fd)
        held.onBelowLimit = { [unowned self] in self.resumeReceiving() }
        session.onPingAcknowledged = { [unowned self] in self.pingSent = 0 }
    }

    /// Whether `pointer` lies in the placeholder bytes of a spliced payload.
    @inline(__always)
    public func isPlaceholder(_ pointer: UnsafeRawPointer) -> Bool {
        pointer >= UnsafeRawPointer(Placeholder.bytes) && pointer < UnsafeRawPointer(Placeholder.bytes + Placeholder.count)
    }

    /// The pipe holding the payload nghttp2 is delivering as placeholders; the first claim takes it.
    public func claimSplicedPipe() -> Pipe? {
        defer { placeholderPipe = nil }
        return placeholderPipe
    }

    deinit { header.deallocate() }

    private func receiveNext() {
        if receiving || isClosed { return }
        if held.isOver || session.queuedFrames > maxQueuedFrames {
            receivePaused = true
            return
        }
        receivePaused = false
        receiving = true
        if headerNext, tracker.headerMissing > 0 {
            reactor.read(fd, into: header, count: tracker.headerMissing, handler: self, tag: Tag.header.rawValue)
            return
        }
        // Mid-payload after a splice, the rest is spliced too, however small.
        let midSplice = headerNext
        headerNext = false
        let remaining = tracker.dataRemaining
        if remaining >= Self.spliceThreshold || (midSplice && remaining > 0), let pipes, let receiver = spliceReceiver,
           receiver.acceptsSplice(stream: tracker.stream) {
            if inPipe == nil { inPipe = try? pipes.take() }
            if let pipe = inPipe {
                reactor.splice(from: fd, to: pipe.write, count: min(remaining, pipes.capacity, Placeholder.count),
                               socket: fd, handler: self, tag: Tag.spliceIn.rawValue)
                return
            }
        }
        reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
    }

    /// Starts reading; `initial` holds bytes already read from the socket (after an upgrade).
    public func start(initial: UnsafeRawBufferPointer? = nil) {
        if let initial, initial.count > 0 {
            tracker.advance(initial)
            do { try session.receive(initial) } catch {
                close(reason: "\(error)")
                return
            }
        }
        receiveNext()
        flushSoon()
        lastReceived = Clock.nanoseconds()
        if keepalive != nil || idleTimeoutSeconds > 0 { armTick() }
    }

    private func resumeReceiving() {
        if receivePaused { receiveNext() }
    }

    /// The keepalive and idle checks run on a tick, a quarter of the shortest interval: a silent
    /// peer is noticed within interval + timeout + two ticks.
    private var tickNanoseconds: UInt64 {
        var seconds = idleTimeoutSeconds > 0 ? idleTimeoutSeconds : .infinity
        if let keepalive { seconds = min(seconds, keepalive.interval, keepalive.timeout) }
        return UInt64(max(seconds / 4, 0.05) * 1e9)
    }

    private func armTick() {
        tickTimer = reactor.timer(nanoseconds: tickNanoseconds, handler: self, tag: Tag.tick.rawValue)
    }

    private func tick() {
        if let reason = closingReason { return close(reason: reason) }
        let now = Clock.nanoseconds()
        if let keepalive {
            if pingSent != 0, now - pingSent >= UInt64(keepalive.timeout * 1e9) {
                return end(reason: "no answer to PING within \(keepalive.timeout.formatted1) s")
            }
            if pingSent == 0, now - lastReceived >= UInt64(keepalive.interval * 1e9) {
                pingSent = now
                session.ping()
                flushSoon()
            }
        }
        if idleTimeoutSeconds > 0, let hasStreams {
            if hasStreams() {
                idleSince = 0
            } else if idleSince == 0 {
                idleSince = now
            } else if now - idleSince >= UInt64(idleTimeoutSeconds * 1e9) {
                return end(reason: "no stream for \(idleTimeoutSeconds.formatted1) s (idle timeout)")
            }
        }
        armTick()
    }

    /// GOAWAY says why, if the peer still reads; the socket closes a second later either way.
    private func end(reason: String) {
        closingReason = reason
        session.terminate()
        flushSoon()
        tickTimer = reactor.timer(nanoseconds: 1_000_000_000, handler: self, tag: Tag.tick.rawValue)
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
            if !session.wantsRead && !session.wantsWrite { close(reason: closingReason ?? session.peerGoaway) }
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
        let tag = Tag(rawValue: completion.tag)
        switch tag {
        case .receive, .header, .spliceIn:
            receiving = false
            guard completion.result > 0 else {
                if completion.result == -EAGAIN { return receiveNext() }
                return close(reason: session.peerGoaway
                             ?? (completion.result == 0 ? Self.closedByPeer : SystemError.reason(-completion.result)))
            }
            let count = Int(completion.result)
            lastReceived = Clock.nanoseconds()
            if tag == .spliceIn {
                // The payload is in `inPipe`; nghttp2 gets as many placeholder bytes.
                tracker.skip(count)
                headerNext = true
                placeholderPipe = inPipe
                inPipe = nil
                deliver(UnsafeRawBufferPointer(start: Placeholder.bytes, count: count))
                if let unclaimed = placeholderPipe {
                    // The stream was gone: nghttp2 dropped its DATA, and the pipe is not reused.
                    placeholderPipe = nil
                    pipes?.discard(unclaimed)
                }
            } else {
                let start = tag == .header ? header : reactor.buffers.pointer(completion.buffer)
                let bytes = UnsafeRawBufferPointer(start: start, count: count)
                tracker.advance(bytes)
                if tag == .receive { receivingBuffer = completion.buffer }
                deliver(bytes)
                receivingBuffer = BufferPool.none
                if tag == .receive { reactor.buffers.release(completion.buffer) }
            }
            if isClosed { return }
            receiveNext()
            flushSoon()
        case .write, .splice:
            writing = false
            if completion.result < 0 { return close(reason: SystemError.reason(-completion.result)) }
            output.advance(Int(completion.result))
            flushSoon()
            resumeReceiving()
        case .tick:
            tick()
        case nil:
            break
        }
    }

    /// Feeds received bytes to the session; a protocol error closes the connection.
    private func deliver(_ bytes: UnsafeRawBufferPointer) {
        do { try session.receive(bytes) } catch { close(reason: "\(error)") }
    }

    /// Closes the socket; everything queued is dropped. The payloads queued for it (streams'
    /// buffers and pipes) and the receive pipe go back in `quiet`: on io_uring a cancelled
    /// writev, splice or splice-in may still be reading or filling them until its completion,
    /// which comes after `onClose` has been called.
    public func close(reason: String?) {
        if isClosed { return }
        isClosed = true
        reactor.cancelTimer(tickTimer)
        let receivePipe = inPipe
        inPipe = nil
        reactor.close(fd) { [self] in
            output.discard()
            session.releaseBodies()
            if let receivePipe { pipes?.discard(receivePipe) }
        }
        let callback = onClose
        onClose = nil
        callback?(reason)
    }
}

public protocol SpliceReceiver: AnyObject {
    /// Whether DATA of `stream` may arrive spliced (as a pipe) rather than in memory.
    func acceptsSplice(stream: StreamID) -> Bool
}

/// PING keepalive settings (seconds).
public struct Keepalive: Sendable {
    public var interval: Double
    public var timeout: Double
    public init(interval: Double = 10, timeout: Double = 10) {
        self.interval = interval
        self.timeout = timeout
    }
}

/// Zeros fed to nghttp2 in place of a spliced payload. Never written after start-up.
enum Placeholder {
    static let count = 1 << 20
    nonisolated(unsafe) static let bytes: UnsafeMutableRawPointer = {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: count)
        return memory
    }()
}
