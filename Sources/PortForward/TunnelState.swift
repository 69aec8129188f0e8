import Reactor

/// Where bytes read from the socket wait until their frames have left: a pooled buffer, or a pipe
/// (splice mode: the payload never enters user space).
public enum Holding {
    case buffer(BufferID)
    case pipe(Pipe)
    /// A bridged tunnel's bytes are its partner's queued chunk, lent: sent from where they lie,
    /// and given back (never released here) when they have left.
    case lent(Chunk)
}

/// Bytes received for the stream and queued for the socket.
public struct Chunk {
    /// `BufferPool.none` for bytes waiting in a pipe.
    public var buffer: BufferID
    public var start: Int
    public var end: Int
    /// A buffer the connection received into, shared with it (and other streams): written from,
    /// never into.
    public var shared = false
    /// Bytes spliced from the connection, waiting in a pipe.
    public var pipe: Pipe? = nil

    public init(buffer: BufferID, start: Int, end: Int, shared: Bool = false, pipe: Pipe? = nil) {
        self.buffer = buffer
        self.start = start
        self.end = end
        self.shared = shared
        self.pipe = pipe
    }

    public var count: Int { end - start }
}

/// What the executor (`Tunnel`) is to do. The state decides; the executor does the I/O, in order.
public enum TunnelAction {
    // socket -> stream
    /// Read the socket into a pooled buffer, if the connection has room (else `noRoom`).
    case receive
    /// Splice mode: wait until the socket has bytes before taking a pipe (if the connection has
    /// room, else `noRoom`).
    case pollReadable
    /// Take a pipe from the pool and report it (`pipeTaken`).
    case takePipe
    /// Splice socket -> pipe.
    case spliceIn(Pipe)
    /// One inline splice socket -> pipe now (the socket most likely has more); report `refilled`.
    case refill(Pipe)
    /// Report `roomAvailable` when the connection's held bytes fall under its limit.
    case waitForRoom
    /// Bytes that count against the connection's held-bytes bound.
    case hold(Int)
    case unhold(Int)
    /// The stream has bytes, or its end, for the multiplexer to take.
    case resume
    // stream -> socket
    case write(BufferID, start: Int, count: Int)
    /// Splice pipe -> socket.
    case splice(Pipe, count: Int)
    /// Open the stream's window by this many bytes: they have left for the socket (or were dropped).
    case consume(Int)
    case shutdownWrite
    /// Bridged: the lent chunk is done with, `count` bytes of it sent (`complete`: all of them).
    case giveBack(Int, complete: Bool)
    // resources
    case releaseBuffer(BufferID)
    /// An emptied pipe goes back to the pool.
    case givePipe(Pipe)
    /// A pipe that may hold bytes is closed.
    case discardPipe(Pipe)
    // ending
    /// End the stream abnormally (HTTP/2: RST_STREAM CANCEL).
    case resetStream
    /// Close the socket with a reset (RST), not an orderly FIN.
    case resetSocket
    /// Close the socket; the chunks' buffers and pipes go back only once no write on the socket
    /// can still read them (`ReactorBackend.close(_:quiet:)`).
    case closeSocket(thenRelease: [Chunk])
    /// Client side: the peer refused the stream; the body's first bytes are the reason.
    case rejected(status: Int, text: [UInt8])
    /// The tunnel is done with its socket and its stream.
    case finished
}

/// A payload the multiplexer takes (`TunnelState.take`).
public enum Taken {
    /// The empty frame that ends the body.
    case end
    case buffer(BufferID, offset: Int)
    case pipe(Pipe)
}

/// The result of an inline splice (`TunnelAction.refill`).
public enum Refill: Sendable {
    case moved(Int)
    case endOfFile
    /// Nothing waiting after all (EAGAIN, EINTR).
    case nothing
    case failed
}

/// The life of one forwarded connection (a socket joined to one stream), as a value: one enum
/// per direction and one for the whole. Each event method appends to `out` the actions that
/// follow from it, which the executor (`Tunnel`) performs; the actions it reports back come in
/// as further events. No I/O here, and nothing of any wire protocol: the same state serves an
/// HTTP/2 stream today and a SPDY stream or a WebSocket channel tomorrow.
///
/// `out` is a buffer the executor reuses, so that the data path allocates nothing.
public struct TunnelState {
    /// socket -> stream
    public enum Up {
        /// Not reading; a read is issued as soon as the socket is attached and there is room.
        case idle
        /// The connection holds all it may: waiting for `roomAvailable`.
        case waitingForRoom
        /// Splice mode: waiting for bytes before taking a pipe (a quiet socket holds none).
        case polling
        /// A pipe is being taken (`takePipe`).
        case takingPipe
        /// A read is outstanding: into a pooled buffer (nil) or spliced into the pipe.
        case receiving(Pipe?)
        /// Bytes read, on their way out through the multiplexer.
        case sending(Outgoing)
        /// An inline splice into the (emptied) pipe is being tried.
        case refilling(Pipe)
        /// End of file read; the end of the body is still to be taken.
        case ending
        /// The body's end was taken, or this direction was given up.
        case ended
    }

    public struct Outgoing {
        public var holding: Holding
        public var count: Int
        /// Handed to the multiplexer (`take`).
        public var taken = 0
        /// Written by the multiplexer to its connection (`payloadSent`).
        public var sent = 0
    }

    /// stream -> socket
    public enum Down {
        /// Bytes that arrive are queued and written in order.
        case open
        /// The peer ended its side: write what is queued, then shut the socket down for writing.
        case peerEnded
        /// The socket was shut down for writing: all was delivered.
        case shutDown
        /// The stream was answered with an error (or refused): what arrives is dropped.
        case discarding
    }

    public enum Phase {
        /// No socket yet (the relay is connecting to the pod).
        case connecting
        /// The socket is attached, the stream open.
        case open
        /// The stream is gone (both sides ended it); the socket is still being written.
        case streamClosed
        case finished
    }

    public private(set) var up = Up.idle
    public private(set) var down = Down.open
    public private(set) var phase = Phase.connecting
    public private(set) var queue = ChunkQueue()
    /// Received bytes count against the stream's window (false for an upgraded request's body,
    /// which came before the multiplexer did).
    public var windowed = true
    /// Splice mode: socket -> pipe -> connection.
    public let splice: Bool
    /// How the stream was answered, when with an error.
    public enum Answer {
        /// Not answered yet, or answered 200.
        case none
        /// Relay side: we answered with an error; what the peer sends is dropped.
        case refusedHere
        /// Client side: the peer answered with an error status; its body is the reason.
        case refusedByPeer(status: Int, text: [UInt8])
    }
    public private(set) var answer = Answer.none
    /// A stream whose socket does not read holds at most this many chunks in pipes (its later
    /// DATA waits in pooled buffers), so that a few stalled streams cannot take the pipe pool.
    public static let maxQueuedPipes = 2
    /// The same for a bridged tunnel (a gateway): its head chunk stays queued, lent, until the
    /// other connection has sent it, so two would leave one pipe receiving; with four, 10-14%
    /// less gateway CPU per GB (docs/PERFORMANCE.md, "The gateway"). The stream window still
    /// bounds the bytes.
    public static let maxQueuedPipesBridged = 4
    /// How much of a refusal's body is kept as its reason.
    public static let maxRejectionText = 4096

    /// Splice mode: until one read of the socket moves at least this many bytes, its reads go into
    /// pooled buffers, not pipes: a small chunk then leaves in its frame header's writev, where a
    /// pipe costs a splice in, a splice out and a refill that finds nothing. From the first large
    /// read on (a bulk stream) it splices. 0: always splice.
    public let bufferedReadsBelow: Int
    /// What the relay and the client use (`Tunnel`): the size under which the receiving side
    /// reads a payload rather than splicing it (`Connection.spliceThreshold`).
    public static let smallRead = 16 * 1024
    /// The largest read of the socket so far (up to `bufferedReadsBelow`).
    private var largestRead = 0
    /// A gateway's tunnel whose "socket" is another tunnel (`Tunnel.join`, before `attach`): a
    /// read is a chunk lent by the partner (`lent`), never a receive or a splice.
    public var bridged = false
    /// Bridged: whether the partner's transport can send a pipe (a base64 WebSocket channel
    /// cannot): if not, arriving DATA is not spliced into pipes.
    public var partnerTakesPipes = true

    public init(splice: Bool, bufferedReadsBelow: Int = 0) {
        self.splice = splice
        self.bufferedReadsBelow = bufferedReadsBelow
    }

    public var isFinished: Bool { if case .finished = phase { return true }; return false }
    private var attached: Bool {
        switch phase {
        case .open, .streamClosed: return true
        case .connecting, .finished: return false
        }
    }
    private var streamGone: Bool {
        switch phase {
        case .streamClosed, .finished: return true
        case .connecting, .open: return false
        }
    }
    private var writing: Bool { queue.writing }

    /// Nothing read from the socket is still waiting to be sent: the tunnel holds nothing for the
    /// multiplexer (it may let go of its stream).
    public var holdsNothingUp: Bool {
        if case .sending = up { return false }
        return true
    }

    /// Whether DATA may arrive spliced: the socket is there and bytes will be written to it.
    public var acceptsSplice: Bool {
        splice && attached && down != .discarding && queue.pipes < (bridged ? Self.maxQueuedPipesBridged : Self.maxQueuedPipes) && (!bridged || partnerTakesPipes)
    }

    // MARK: events: the socket

    /// The socket is connected: start moving bytes both ways.
    public mutating func attach(_ out: inout [TunnelAction]) {
        guard case .connecting = phase else { return }
        phase = .open
        readNext(&out)
        writeNext(&out)
    }

    private mutating func readNext(_ out: inout [TunnelAction]) {
        guard case .open = phase, case .idle = up else { return }
        if splice && largestRead >= bufferedReadsBelow && !bridged {
            up = .polling
            out.append(.pollReadable)
        } else {
            up = .receiving(nil)
            out.append(.receive)
        }
    }

    /// The read just asked for cannot start: the connection holds all it may.
    public mutating func noRoom(_ out: inout [TunnelAction]) {
        switch up {
        case .polling, .receiving(nil):
            up = .waitingForRoom
            out.append(.waitForRoom)
        default:
            break
        }
    }

    public mutating func roomAvailable(_ out: inout [TunnelAction]) {
        guard case .waitingForRoom = up else { return }
        up = .idle
        readNext(&out)
    }

    /// Splice mode: the socket has bytes.
    public mutating func readable(_ out: inout [TunnelAction]) {
        guard case .polling = up, !isFinished else { return }
        up = .takingPipe
        out.append(.takePipe)
    }

    /// nil: out of descriptors for pipes (thousands of busy streams): this chunk goes through a
    /// pooled buffer instead.
    public mutating func pipeTaken(_ pipe: Pipe?, _ out: inout [TunnelAction]) {
        guard case .takingPipe = up else {
            if let pipe { out.append(.givePipe(pipe)) }
            return
        }
        up = .receiving(pipe)
        out.append(pipe.map { .spliceIn($0) } ?? .receive)
    }

    /// A read finished: `count` bytes in `holding`, 0 at end of file.
    public mutating func read(_ count: Int, into buffer: BufferID, _ out: inout [TunnelAction]) {
        guard case .receiving(let pipe) = up else {
            if buffer != BufferPool.none { out.append(.releaseBuffer(buffer)) }
            return
        }
        largestRead = max(largestRead, count)
        if count > 0 {
            up = .sending(Outgoing(holding: pipe.map { .pipe($0) } ?? .buffer(buffer), count: count))
            out.append(.hold(count))
        } else {
            if let pipe { out.append(.givePipe(pipe)) }
            up = .ending
        }
        out.append(.resume)
    }

    /// The socket had nothing after all (a splice's EAGAIN): a quiet socket holds no pipe.
    public mutating func readFoundNothing(_ out: inout [TunnelAction]) {
        guard case .receiving(let pipe) = up else { return }
        if let pipe { out.append(.givePipe(pipe)) }
        up = .idle
        readNext(&out)
    }

    /// Bridged: the partner lends `chunk` (what it would have written to its socket) as this
    /// tunnel's next read.
    public mutating func lent(_ chunk: Chunk, _ out: inout [TunnelAction]) {
        guard chunk.count > 0, case .receiving(nil) = up, case .open = phase else {
            out.append(.giveBack(0, complete: false))
            return
        }
        up = .sending(Outgoing(holding: .lent(chunk), count: chunk.count))
        out.append(.hold(chunk.count))
        out.append(.resume)
    }

    /// Bridged: the partner shut its side down (its peer's end): this tunnel's end of file.
    public mutating func lenderEnded(_ out: inout [TunnelAction]) {
        guard case .receiving(nil) = up else { return }
        up = .ending
        out.append(.resume)
    }

    /// A read or a write on the socket failed.
    public mutating func socketFailed(_ out: inout [TunnelAction]) {
        abort(&out)
    }

    /// `written` bytes of the head chunk were written to the socket.
    public mutating func written(_ written: Int, _ out: inout [TunnelAction]) {
        guard queue.writing else { return }
        queue.writing = false
        if let done = queue.advance(written) { out.append(release(done, emptied: true)) }
        out.append(.unhold(written))
        if windowed { out.append(.consume(written)) }
        writeNext(&out)
        finishIfDone(&out)
    }

    // MARK: events: the multiplexer

    /// Bytes, at most `limit`, ready for the next frame, and whether the body ends with them.
    /// (0, false): nothing yet; the multiplexer waits for `resume`.
    public func pending(limit: Int) -> (count: Int, endsBody: Bool) {
        switch up {
        case .sending(let outgoing) where outgoing.count > outgoing.taken:
            return (min(limit, outgoing.count - outgoing.taken), false)
        case .ending:
            return (0, true)
        default:
            return (0, false)
        }
    }

    /// The multiplexer takes the next `count` bytes (0: the end of the body).
    public mutating func take(_ count: Int) -> Taken {
        if count == 0 {
            if case .ending = up { up = .ended }
            return .end
        }
        guard case .sending(var outgoing) = up else { preconditionFailure("take(\(count)) with nothing pending") }
        let offset = outgoing.taken
        outgoing.taken += count
        up = .sending(outgoing)
        switch outgoing.holding {
        case .buffer(let buffer): return .buffer(buffer, offset: offset)
        case .pipe(let pipe): return .pipe(pipe)
        case .lent(let chunk): return chunk.pipe.map(Taken.pipe) ?? .buffer(chunk.buffer, offset: chunk.start + offset)
        }
    }

    /// `count` taken bytes have been written to the multiplexer's connection.
    public mutating func payloadSent(_ count: Int, _ out: inout [TunnelAction]) {
        guard case .sending(var outgoing) = up else { return }
        outgoing.sent += count
        // After an abort the rest will never be taken: what was taken is enough.
        guard outgoing.sent == outgoing.count || (isFinished && outgoing.sent == outgoing.taken) else {
            up = .sending(outgoing)
            return
        }
        out.append(.unhold(outgoing.count))
        let emptied = outgoing.sent == outgoing.count
        switch outgoing.holding {
        case .pipe(let pipe):
            // A busy socket usually has more bytes waiting when its last ones have left: splice
            // them into the emptied pipe at once, without waiting for readiness first.
            if emptied, case .open = phase {
                up = .refilling(pipe)
                out.append(.refill(pipe))
                return
            }
            out.append(emptied ? .givePipe(pipe) : .discardPipe(pipe))
        case .buffer(let buffer):
            out.append(.releaseBuffer(buffer))
        case .lent:
            out.append(.giveBack(outgoing.sent, complete: emptied))
        }
        up = isFinished ? .ended : .idle
        readNext(&out)
        finishIfDone(&out)
    }

    public mutating func refilled(_ result: Refill, _ out: inout [TunnelAction]) {
        guard case .refilling(let pipe) = up else { return }
        switch result {
        case .moved(let count):
            up = .sending(Outgoing(holding: .pipe(pipe), count: count))
            out.append(.hold(count))
            out.append(.resume)
        case .endOfFile:
            out.append(.givePipe(pipe))
            up = .ending
            out.append(.resume)
        case .nothing:
            out.append(.givePipe(pipe))
            up = .idle
            readNext(&out)
            finishIfDone(&out)
        case .failed:
            out.append(.givePipe(pipe))
            up = .idle
            abort(&out)
        }
    }

    /// `count` taken bytes will never be written: the multiplexer's connection is gone.
    public mutating func payloadDropped(_ count: Int, _ out: inout [TunnelAction]) {
        guard case .sending(var outgoing) = up else { return }
        outgoing.sent += count
        guard outgoing.sent == outgoing.taken else {
            up = .sending(outgoing)
            return
        }
        out.append(.unhold(outgoing.count))
        switch outgoing.holding {
        case .pipe(let pipe): out.append(.discardPipe(pipe))
        case .buffer(let buffer): out.append(.releaseBuffer(buffer))
        case .lent: out.append(.giveBack(outgoing.sent, complete: false))
        }
        up = .ended
    }

    /// `count` bytes of DATA arrived. True: queue them (`queued`, or through `queue` and then
    /// `queuedMore`); false: they are dropped, their window reopened.
    public mutating func arriving(_ count: Int, _ out: inout [TunnelAction]) -> Bool {
        if down == .discarding || isFinished {
            if windowed { out.append(.consume(count)) }
            return false
        }
        queue.queued += count
        out.append(.hold(count))
        return true
    }

    /// Client side: part of a refusal's body, kept as its reason.
    public mutating func rejectionText(_ bytes: UnsafeRawBufferPointer) {
        guard case .refusedByPeer(let status, var text) = answer, text.count < Self.maxRejectionText else { return }
        answer = .none
        text.append(contentsOf: bytes)
        answer = .refusedByPeer(status: status, text: text)
    }

    /// Whether arriving bytes may be written straight from the buffer they were received into.
    public var sharesReceivedBuffer: Bool { queue.isEmpty && attached }

    /// A fresh private buffer for arriving bytes, to be copied in (then `grewLast`).
    public mutating func appendBuffer(_ buffer: BufferID) { queue.appendBuffer(buffer) }

    /// `count` arriving bytes were copied behind the last chunk's end (`ChunkQueue.copyTarget`).
    public mutating func grewLast(_ count: Int) { queue.grewLast(count) }

    /// A chunk of arrived bytes (counted by `arriving`) is queued.
    public mutating func queued(_ chunk: Chunk, _ out: inout [TunnelAction]) {
        queue.append(chunk)
        writeNext(&out)
    }

    /// Arrived bytes were copied into the queue's buffers.
    public mutating func queuedMore(_ out: inout [TunnelAction]) { writeNext(&out) }

    /// The multiplexer handed the same spliced payload over in another piece.
    public mutating func splicedMore(_ count: Int, _ out: inout [TunnelAction]) {
        if queue.extendPipe(count) {
            writeNext(&out)
            return
        }
        queue.queued -= count
        out.append(.unhold(count))
        abort(&out)
    }

    /// The peer ended its side of the stream.
    public mutating func peerEnded(_ out: inout [TunnelAction]) {
        if isFinished { return }
        if case .refusedByPeer(let status, let text) = answer {
            out.append(.rejected(status: status, text: text))
            abort(&out)
            return
        }
        if down == .open { down = .peerEnded }
        writeNext(&out)
    }

    /// Client side: the answer's head arrived.
    public mutating func responded(status: Int, _ out: inout [TunnelAction]) {
        guard status != 200, case .none = answer else { return }
        answer = .refusedByPeer(status: status, text: [])
        dropQueued(&out)
    }

    /// Relay side: the stream is answered with an error; whatever the client sends is dropped.
    public mutating func refused(_ out: inout [TunnelAction]) {
        answer = .refusedHere
        dropQueued(&out)
    }

    /// The stream is gone: 0 when both sides ended it, else the peer's (or our) reset code.
    public mutating func streamClosed(errorCode: UInt32, _ out: inout [TunnelAction]) {
        switch phase {
        case .finished:
            return
        case .connecting:
            // No socket yet: nothing to drain.
            finish(&out)
        case .open, .streamClosed:
            phase = .streamClosed
            if errorCode != 0 {
                closeWithReset(&out)
            } else {
                finishIfDone(&out)
            }
        }
    }

    /// The end of the tunnel's purpose (an error, a refusal, a shutdown): reset both the stream
    /// and the socket.
    public mutating func abort(_ out: inout [TunnelAction]) {
        if isFinished { return }
        if !streamGone { out.append(.resetStream) }
        closeWithReset(&out)
    }

    /// The multiplexer's connection is gone: nothing queued for it will be sent. What it took
    /// stays held until it says so (`payloadDropped`): its cancelled write may still read it.
    public mutating func connectionLost(_ out: inout [TunnelAction]) {
        if isFinished { return }
        phase = attached ? .streamClosed : .connecting
        closeWithReset(&out)
    }

    // MARK: the rules

    private mutating func writeNext(_ out: inout [TunnelAction]) {
        guard attached, !queue.writing else { return }
        if let chunk = queue.head {
            queue.writing = true
            if let pipe = chunk.pipe {
                out.append(.splice(pipe, count: chunk.count))
            } else {
                out.append(.write(chunk.buffer, start: chunk.start, count: chunk.count))
            }
            return
        }
        if down == .peerEnded {
            down = .shutDown
            out.append(.shutdownWrite)
            finishIfDone(&out)
        }
    }

    private mutating func dropQueued(_ out: inout [TunnelAction]) {
        down = .discarding
        // A chunk being written stays until its write completes (the kernel may be reading it).
        let kept = queue.writing ? queue.head : nil
        let queued = queue.queued - (kept?.count ?? 0)
        if windowed && queued > 0 { out.append(.consume(queued)) }
        if queued > 0 { out.append(.unhold(queued)) }
        for chunk in queue.removeAll(keepingHead: kept != nil) { out.append(release(chunk, emptied: false)) }
    }

    private mutating func release(_ chunk: Chunk, emptied: Bool) -> TunnelAction {
        if let pipe = chunk.pipe { return emptied ? .givePipe(pipe) : .discardPipe(pipe) }
        return .releaseBuffer(chunk.buffer)
    }

    private mutating func closeWithReset(_ out: inout [TunnelAction]) {
        if attached { out.append(.resetSocket) }
        finish(&out)
    }

    private mutating func finishIfDone(_ out: inout [TunnelAction]) {
        guard case .streamClosed = phase else { return }
        if case .refusedByPeer = answer {
            // Refused: nothing is left to write; close at once.
        } else {
            // Both directions ended cleanly: the last written byte closes the socket.
            if queue.writing || !queue.isEmpty { return }
            if case .sending(let outgoing) = up, outgoing.taken > outgoing.sent { return }
        }
        finish(&out)
    }

    private mutating func finish(_ out: inout [TunnelAction]) {
        let hadSocket = attached
        phase = .finished
        let queued = queue.queued
        let chunks = queue.removeAll()
        if hadSocket {
            out.append(.closeSocket(thenRelease: chunks))
        } else {
            for chunk in chunks { out.append(release(chunk, emptied: false)) }
        }
        if queued > 0 { out.append(.unhold(queued)) }
        // Bytes read from the socket and still queued for the multiplexer stay held until they
        // are sent or dropped (`payloadSent`, `payloadDropped`).
        switch up {
        case .sending(let outgoing) where outgoing.taken == outgoing.sent:
            out.append(.unhold(outgoing.count))
            switch outgoing.holding {
            case .buffer(let buffer): out.append(.releaseBuffer(buffer))
            case .pipe(let pipe): out.append(.discardPipe(pipe))
            case .lent: out.append(.giveBack(outgoing.sent, complete: false))
            }
            up = .ended
        case .sending:
            break
        case .receiving(let pipe?), .refilling(let pipe):
            out.append(.discardPipe(pipe))
            up = .ended
        default:
            up = .ended
        }
        out.append(.finished)
    }
}

/// The chunks queued for the socket, oldest first, and what they count.
public struct ChunkQueue {
    private var chunks: [Chunk] = []
    private var headIndex = 0
    /// A write of the head chunk is outstanding.
    public fileprivate(set) var writing = false
    /// Bytes received for the stream and not yet written to the socket.
    public fileprivate(set) var queued = 0
    /// Chunks waiting in pipes.
    public private(set) var pipes = 0

    public init() {}

    public var isEmpty: Bool { headIndex == chunks.count }
    public var count: Int { chunks.count - headIndex }
    public var head: Chunk? { isEmpty ? nil : chunks[headIndex] }

    mutating func append(_ chunk: Chunk) {
        if chunk.pipe != nil { pipes += 1 }
        if isEmpty && chunks.capacity == 0 { chunks.reserveCapacity(4) }
        chunks.append(chunk)
    }

    /// The pooled buffer the next arrived bytes may be copied into, and where: the last chunk's,
    /// when it is private and has room.
    public func copyTarget(bufferSize: Int) -> (buffer: BufferID, end: Int)? {
        guard let last = chunks.last, !isEmpty, !last.shared, last.pipe == nil, last.end < bufferSize else { return nil }
        return (last.buffer, last.end)
    }

    mutating func grewLast(_ count: Int) { chunks[chunks.count - 1].end += count }

    mutating func appendBuffer(_ buffer: BufferID) { append(Chunk(buffer: buffer, start: 0, end: 0)) }

    fileprivate mutating func extendPipe(_ count: Int) -> Bool {
        guard !isEmpty, chunks[chunks.count - 1].pipe != nil else { return false }
        chunks[chunks.count - 1].end += count
        return true
    }

    /// `written` bytes of the head left; returns the head when it is all written.
    fileprivate mutating func advance(_ written: Int) -> Chunk? {
        queued -= written
        chunks[headIndex].start += written
        guard chunks[headIndex].start == chunks[headIndex].end else { return nil }
        let done = chunks[headIndex]
        if done.pipe != nil { pipes -= 1 }
        headIndex += 1
        if headIndex == chunks.count {
            chunks.removeAll(keepingCapacity: true)
            headIndex = 0
        }
        return done
    }

    /// Empties the queue and returns what was in it; with `keepingHead`, the head (being written)
    /// stays, alone.
    fileprivate mutating func removeAll(keepingHead: Bool = false) -> [Chunk] {
        if isEmpty {
            queued = 0
            return []
        }
        let kept = keepingHead ? chunks[headIndex] : nil
        let rest = Array(chunks[(headIndex + (keepingHead ? 1 : 0))...])
        chunks.removeAll(keepingCapacity: true)
        headIndex = 0
        pipes = 0
        queued = 0
        writing = false
        if let kept {
            append(kept)
            queued = kept.count
            writing = true
        }
        return rest
    }
}

extension TunnelAction: CustomStringConvertible {
    /// One short word per action (tests compare them; `-v` logs may show them).
    public var description: String {
        func name(_ pipe: Pipe) -> String { "p\(pipe.read)" }
        switch self {
        case .receive: return "receive"
        case .pollReadable: return "pollReadable"
        case .takePipe: return "takePipe"
        case .spliceIn(let pipe): return "spliceIn(\(name(pipe)))"
        case .refill(let pipe): return "refill(\(name(pipe)))"
        case .waitForRoom: return "waitForRoom"
        case .hold(let count): return "hold(\(count))"
        case .unhold(let count): return "unhold(\(count))"
        case .resume: return "resume"
        case .write(let buffer, let start, let count): return "write(b\(buffer)@\(start)+\(count))"
        case .splice(let pipe, let count): return "splice(\(name(pipe)),\(count))"
        case .consume(let count): return "consume(\(count))"
        case .shutdownWrite: return "shutdownWrite"
        case .giveBack(let count, let complete): return "giveBack(\(count)\(complete ? "" : ",incomplete"))"
        case .releaseBuffer(let buffer): return "release(b\(buffer))"
        case .givePipe(let pipe): return "give(\(name(pipe)))"
        case .discardPipe(let pipe): return "discard(\(name(pipe)))"
        case .resetStream: return "resetStream"
        case .resetSocket: return "resetSocket"
        case .closeSocket(let chunks):
            return "close[" + chunks.map { $0.pipe.map(name) ?? "b\($0.buffer)" }.joined(separator: ",") + "]"
        case .rejected(let status, let text): return "rejected(\(status),\(String(decoding: text, as: UTF8.self)))"
        case .finished: return "finished"
        }
    }
}

extension Taken: CustomStringConvertible {
    public var description: String {
        switch self {
        case .end: return "end"
        case .buffer(let buffer, let offset): return "buffer(b\(buffer)+\(offset))"
        case .pipe(let pipe): return "pipe(p\(pipe.read))"
        }
    }
}
