import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One forwarded TCP connection: a socket joined to one multiplexed stream. The relay joins a
/// pod's socket to a stream a client opened; the client joins an accepted local socket to a
/// stream it opened. The decisions are `TunnelState`'s; this class is their executor: it turns
/// reactor completions and transport callbacks into events, and performs the actions that come
/// back, in order, in one place (`perform`).
///
/// The bytes move the same way on both sides:
/// - socket -> stream: a read lands in a pooled buffer, or (splice mode, once one read of the
///   socket has moved `TunnelState.smallRead` bytes or more) is spliced into a pipe once the
///   socket is readable; the transport's frames point into it (NO_COPY) or splice from
///   the pipe; when they have left, the buffer or pipe goes back and the next read is issued.
///   End of file ends the stream's body.
/// - stream -> socket: payload that arrived spliced is spliced on from its pipe; payload in the
///   connection's receive buffer is written from there when nothing is queued before it, else
///   copied into pooled buffers. The stream's window opens only by what the socket took. The
///   peer's end becomes `shutdown(SHUT_WR)` once everything before it is written.
///
/// So a socket that stops reading stops its own stream, and holds at most one stream window of
/// buffered bytes.
public final class Tunnel: CompletionHandler {
    public private(set) var state: TunnelState
    /// Cut once the tunnel has finished and holds nothing for it (the transport holds the tunnel
    /// for as long as frames point into its buffers).
    public private(set) var transport: StreamTransport?
    public private(set) var fd: FileDescriptor = -1
    let reactor: ReactorBackend
    private let pipes: PipePool?
    /// The bound this tunnel's bytes count against: its connection's; a gateway's node tunnel
    /// counts against its client's connection (`join`).
    private var held: HeldBytes
    private var buffers: BufferPool { reactor.buffers }
    /// The actions of the event being handled, performed in order; reused, so that the data path
    /// allocates nothing.
    private var actions: [TunnelAction] = []
    private var performing = false

    /// Called once when the tunnel is done with its socket and its stream.
    public var onFinish: ((Tunnel) -> Void)?
    /// Client side: the relay answered with an error status; the text is the reason.
    public var onRejected: ((Int, String) -> Void)?

    // Bridged (a gateway): the "socket" is another tunnel (`join`). What this tunnel would write
    // to its socket is lent to the partner as the partner's read, and counts as written when the
    // partner gives it back (its bytes have left); an end of file, a reset and a close cross the
    // same way. Each side keeps its own stream's flow control: a window opens only when the
    // bytes have left through the other stream.
    /// The tunnel at the other end (weak: each is held by its own transport).
    private weak var partner: Tunnel?
    /// The partner whose chunk this tunnel is sending: held until it is given back.
    private var lender: Tunnel?
    /// This tunnel's read is outstanding: the partner's next chunk (or end) goes here.
    private var wantsChunk = false
    /// A write (or the shutdown) the partner was not ready for yet.
    private var pendingLend: Chunk?
    private var pendingEnd = false
    /// The chunk lent now, and whether it must be released when given back (this tunnel closed
    /// meanwhile: the partner's connection may still be sending from it).
    private var lentOut: Chunk?
    private var releaseWhenGivenBack = false

    private enum Tag: UInt32 { case receive = 1, write, readable, spliceIn }

    public init(transport: StreamTransport, reactor: ReactorBackend, pipes: PipePool? = nil) {
        self.transport = transport
        self.reactor = reactor
        self.pipes = pipes
        held = transport.held
        state = TunnelState(splice: pipes != nil, bufferedReadsBelow: TunnelState.smallRead)
        actions.reserveCapacity(8)
    }

    public var finished: Bool { state.isFinished }
    public var acceptsSplice: Bool { state.acceptsSplice }
    /// Received bytes count against the stream's window (false for an upgraded request's body).
    public var windowed: Bool {
        get { state.windowed }
        set { state.windowed = newValue }
    }

    // MARK: events

    @inline(__always)
    private func handle(_ event: (inout TunnelState, inout [TunnelAction]) -> Void) {
        event(&state, &actions)
        perform()
    }

    /// The socket is connected: start moving bytes both ways.
    public func attach(_ fd: FileDescriptor) {
        guard !state.isFinished, self.fd < 0 else {
            // Too late (the stream went while connecting): the socket is not wanted.
            reactor.close(fd)
            return
        }
        self.fd = fd
        Sockets.noDelay(fd)
        handle { $0.attach(&$1) }
    }

    /// Bridged: `other` (its stream answered) is this tunnel's socket, and this tunnel is its:
    /// bytes move both ways. Too late (this tunnel's stream went meanwhile): the other is aborted.
    public func join(_ other: Tunnel) {
        guard !state.isFinished, case .connecting = state.phase, case .connecting = other.state.phase else {
            other.abort()
            return
        }
        state.bridged = true
        other.state.bridged = true
        // What the node stream holds for this client counts against the client's connection: a
        // client that does not read pauses its own connection, never the node connection that
        // every client of that node shares.
        other.held = held
        state.partnerTakesPipes = other.pipes != nil
        other.state.partnerTakesPipes = pipes != nil
        partner = other
        other.partner = self
        other.handle { $0.attach(&$1) }
        handle { $0.attach(&$1) }
    }

    /// Bridged: hands the partner what it waits for, if it waits.
    private func lendIfWanted() {
        guard let other = partner, other.wantsChunk, !other.finished else { return }
        if let chunk = pendingLend {
            pendingLend = nil
            lentOut = chunk
            other.wantsChunk = false
            other.lender = self
            other.handle { $0.lent(chunk, &$1) }
        } else if pendingEnd {
            pendingEnd = false
            other.wantsChunk = false
            other.handle { $0.lenderEnded(&$1) }
        }
    }

    /// Bridged: the partner is done with the chunk this tunnel lent it.
    private func givenBack(_ count: Int, complete: Bool) {
        let chunk = lentOut
        lentOut = nil
        if state.isFinished {
            // Closed meanwhile: the chunk stayed out of `closeSocket`'s release; it goes now.
            if releaseWhenGivenBack, let chunk { release(chunk) }
            releaseWhenGivenBack = false
            return
        }
        if complete {
            handle { $0.written(count, &$1) }
        } else {
            handle { $0.socketFailed(&$1) }
        }
    }

    /// Whether `queued` is the chunk lent as `lent`: the same pipe (a pipe chunk's start moves as
    /// it is written), or the same buffer at the same start.
    private static func same(_ lent: Chunk, _ queued: Chunk) -> Bool {
        if let pipe = lent.pipe { return queued.pipe?.read == pipe.read }
        return queued.pipe == nil && lent.buffer == queued.buffer && lent.start == queued.start
    }

    private func release(_ chunk: Chunk) {
        if let pipe = chunk.pipe { pipes?.discard(pipe) } else { buffers.release(chunk.buffer) }
    }

    public func received(_ inbound: Inbound) {
        switch inbound {
        case .spliced(let pipe, let count):
            if state.arriving(count, &actions) {
                handle { $0.queued(Chunk(buffer: BufferPool.none, start: 0, end: count, pipe: pipe), &$1) }
            } else {
                // Not to be written after all: its window is open again; the pipe goes.
                pipes?.discard(pipe)
                perform()
            }
        case .splicedMore(let count):
            if state.arriving(count, &actions) {
                handle { $0.splicedMore(count, &$1) }
            } else {
                perform()
            }
        case .bytes(let bytes, let buffer):
            guard state.arriving(bytes.count, &actions) else {
                state.rejectionText(bytes)
                return perform()
            }
            if state.sharesReceivedBuffer, buffer != BufferPool.none {
                // Nothing queued: write straight from the buffer the bytes were received into.
                let start = bytes.baseAddress! - UnsafeRawPointer(buffers.pointer(buffer))
                buffers.retain(buffer)
                return handle { $0.queued(Chunk(buffer: buffer, start: start, end: start + bytes.count, shared: true), &$1) }
            }
            var offset = 0
            let size = buffers.bufferSize
            while offset < bytes.count {
                guard let (target, end) = state.queue.copyTarget(bufferSize: size) else {
                    let fresh = buffers.take()
                    state.appendBuffer(fresh)
                    continue
                }
                let step = min(size - end, bytes.count - offset)
                (buffers.pointer(target) + end).copyMemory(from: bytes.baseAddress! + offset, byteCount: step)
                state.grewLast(step)
                offset += step
            }
            handle { $0.queuedMore(&$1) }
        }
    }

    public func peerEnded() { handle { $0.peerEnded(&$1) } }
    /// Client side: the answer's head arrived.
    public func responded(status: Int) { handle { $0.responded(status: status, &$1) } }
    /// Relay side: the stream is answered with an error; whatever the client sends is dropped.
    public func refused() { handle { $0.refused(&$1) } }
    /// The stream is gone: 0 when both sides ended it, else the reset code.
    public func streamClosed(errorCode: UInt32) {
        if errorCode != 0, !state.isFinished { resetByPeer = errorCode }
        handle { $0.streamClosed(errorCode: errorCode, &$1) }
    }
    /// The reset code of a stream the other side reset while this tunnel was still going (nil:
    /// it was not); the client names such a connection in one line.
    public private(set) var resetByPeer: UInt32?
    /// An error, or the end of the tunnel's purpose: reset both the stream and the socket.
    public func abort() { handle { $0.abort(&$1) } }
    /// The connection under the stream is gone: nothing queued for it will be sent.
    public func connectionLost() { handle { $0.connectionLost(&$1) } }

    // MARK: the pull side (the transport writes frames)

    public func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) { state.pending(limit: limit) }

    /// Where the next `count` bytes lie (0: the end of the body).
    public func take(_ count: Int) -> Taken { state.take(count) }

    public func payloadSent(_ count: Int) { handle { $0.payloadSent(count, &$1) } }
    public func payloadDropped(_ count: Int) { handle { $0.payloadDropped(count, &$1) } }

    // MARK: completions

    public func complete(_ completion: Completion) {
        switch Tag(rawValue: completion.tag) {
        case .receive, .spliceIn:
            let result = completion.result
            if result >= 0 {
                handle { $0.read(Int(result), into: completion.buffer, &$1) }
            } else if result == -EAGAIN && Tag(rawValue: completion.tag) == .spliceIn {
                handle { $0.readFoundNothing(&$1) }
            } else if !state.isFinished {
                handle { $0.socketFailed(&$1) }
            }
        case .readable:
            handle { $0.readable(&$1) }
        case .write:
            if completion.result < 0 {
                if !state.isFinished { handle { $0.socketFailed(&$1) } }
            } else {
                handle { $0.written(Int(completion.result), &$1) }
            }
        case nil:
            if completion.buffer != BufferPool.none { buffers.release(completion.buffer) }
        }
    }

    // MARK: the executor

    private func perform() {
        if performing { return }
        performing = true
        // `finished` may drop the owner's reference; the loop still needs self.
        withExtendedLifetime(self) {
            var index = 0
            while index < actions.count {
                let action = actions[index]
                index += 1
                execute(action)
            }
            actions.removeAll(keepingCapacity: true)
        }
        performing = false
        if state.isFinished && state.holdsNothingUp { transport = nil }
    }

    private func execute(_ action: TunnelAction) {
        switch action {
        case .receive:
            if held.isOver { return state.noRoom(&actions) }
            if state.bridged {
                guard let partner else {
                    // The partner finished and went (its end was not taken): the end of file.
                    return state.lenderEnded(&actions)
                }
                wantsChunk = true
                partner.lendIfWanted()
                return
            }
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        case .pollReadable:
            if held.isOver { return state.noRoom(&actions) }
            reactor.pollReadable(fd, handler: self, tag: Tag.readable.rawValue)
        case .takePipe:
            state.pipeTaken(try? pipes?.take(), &actions)
        case .spliceIn(let pipe):
            reactor.splice(from: fd, to: pipe.write, count: pipes!.capacity, socket: fd, handler: self, tag: Tag.spliceIn.rawValue)
        case .refill(let pipe):
            let moved = reactor.spliceNow(from: fd, to: pipe.write, count: pipes!.capacity)
            let result: Refill = moved > 0 ? .moved(moved) : moved == 0 ? .endOfFile
                : (moved == -Int(EAGAIN) || moved == -Int(EINTR)) ? .nothing : .failed
            state.refilled(result, &actions)
        case .waitForRoom:
            held.wait { [weak self] in self?.handle { $0.roomAvailable(&$1) } }
        case .hold(let count):
            held.add(count)
        case .unhold(let count):
            held.remove(count)
        case .resume:
            transport?.resume()
        case .write(let buffer, let start, let count):
            if state.bridged {
                pendingLend = Chunk(buffer: buffer, start: start, end: start + count)
                return lendIfWanted()
            }
            reactor.write(fd, from: buffers.pointer(buffer) + start, count: count, handler: self, tag: Tag.write.rawValue)
        case .splice(let pipe, let count):
            if state.bridged {
                pendingLend = Chunk(buffer: BufferPool.none, start: 0, end: count, pipe: pipe)
                return lendIfWanted()
            }
            reactor.splice(from: pipe.read, to: fd, count: count, socket: fd, handler: self, tag: Tag.write.rawValue)
        case .consume(let count):
            transport?.consume(count)
        case .shutdownWrite:
            if state.bridged {
                pendingEnd = true
                return lendIfWanted()
            }
            Sockets.shutdownWrite(fd)
        case .giveBack(let count, let complete):
            let other = lender
            lender = nil
            other?.givenBack(count, complete: complete)
        case .releaseBuffer(let buffer):
            buffers.release(buffer)
        case .givePipe(let pipe):
            pipes?.give(pipe)
        case .discardPipe(let pipe):
            pipes?.discard(pipe)
        case .resetStream:
            transport?.reset()
        case .resetSocket:
            if state.bridged {
                // The partner's stream is reset too.
                let other = partner
                partner = nil
                other?.abort()
                return
            }
            Sockets.resetOnClose(fd)
        case .closeSocket(let chunks) where state.bridged:
            // The chunk lent now is released when it is given back; the rest at once.
            for chunk in chunks {
                if let lent = lentOut, Self.same(lent, chunk) {
                    releaseWhenGivenBack = true
                } else {
                    release(chunk)
                }
            }
            pendingLend = nil
            wantsChunk = false
            // A partner still reading sees the end of its "socket".
            if let other = partner, !other.finished {
                pendingEnd = true
                lendIfWanted()
            }
        case .closeSocket(let chunks):
            let closing = fd
            fd = -1
            if chunks.isEmpty {
                reactor.close(closing)
            } else {
                // A write still in the kernel may read these buffers until its cancellation completes.
                reactor.close(closing) { [buffers, pipes] in
                    for chunk in chunks {
                        if let pipe = chunk.pipe { pipes?.discard(pipe) } else { buffers.release(chunk.buffer) }
                    }
                }
            }
        case .rejected(let status, let text):
            let reason = Refusal.message(body: String(decoding: text, as: UTF8.self))
            let callback = onRejected
            onRejected = nil
            callback?(status, reason.isEmpty ? "status \(status)" : reason)
        case .finished:
            let callback = onFinish
            onFinish = nil
            callback?(self)
        }
    }
}
