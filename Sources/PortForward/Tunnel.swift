import CLinuxShim
import CNGHTTP2
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One forwarded TCP connection: a socket joined to one HTTP/2 stream. The relay joins a pod's
/// socket to a stream a client opened; the client joins an accepted local socket to a stream it
/// opened. The bytes move the same way on both sides:
///
/// - socket -> stream: a receive lands in a pooled buffer; the stream's DATA frames point into it
///   (NO_COPY); when the frames have been written, the buffer goes back and the next receive is
///   issued. End of file becomes END_STREAM.
/// - stream -> socket: DATA is copied into pooled buffers and written to the socket; the stream's
///   window is opened (`Session.consume`) only by what the socket took. END_STREAM becomes
///   `shutdown(SHUT_WR)` once everything before it is written.
///
/// So a socket that stops reading stops its own stream, and holds at most one stream window of
/// buffered bytes.
public final class Tunnel: DataSource, CompletionHandler {
    /// Set once the stream is opened (client side) or from the request (relay side).
    public var stream: StreamID
    public let connection: Connection
    public private(set) var fd: FileDescriptor = -1
    private var reactor: ReactorBackend { connection.reactor }
    private var buffers: BufferPool { connection.reactor.buffers }
    private var session: Session { connection.session }

    // socket -> stream
    private var upBuffer = BufferPool.none
    private var upCount = 0
    private var upTaken = 0
    private var upSent = 0
    private var upReceiving = false
    private var upEnded = false
    private var upEndTaken = false
    /// What of `upCount` counts against the connection's held bytes.
    private var upHeld = 0
    /// Waiting for the connection's held bytes to fall under the limit before reading the socket.
    private var waitingForRoom = false

    // stream -> socket
    private struct Chunk {
        var buffer: BufferID
        var start: Int
        var end: Int
        /// A received buffer shared with the connection (and other streams): written from, never into.
        var shared = false
        /// Bytes spliced from the connection, waiting in a pipe (then `buffer` is none).
        var pipe: Pipe? = nil
    }
    private var chunks: [Chunk] = []
    private var chunkHead = 0
    private var writing = false
    private var peerEnded = false
    private var shutDown = false
    /// Bytes received for the stream and not yet written to the socket.
    public private(set) var downQueued = 0
    /// Chunks waiting in pipes: a stream whose socket does not read holds at most
    /// `maxQueuedPipes` of them (its later DATA waits in pooled buffers), so a few stalled streams
    /// cannot take the pipe pool.
    private var queuedPipes = 0
    public static let maxQueuedPipes = 2
    private var held: HeldBytes { connection.held }

    private var streamClosed = false
    public private(set) var finished = false
    /// Received bytes are dropped (and their window opened) instead of written.
    public private(set) var discarding = false
    /// Received bytes count against the stream's window (false for an upgraded request's body,
    /// which came before HTTP/2 did).
    public var windowed = true
    /// Called once when the tunnel is done with its socket and its stream.
    public var onFinish: ((Tunnel) -> Void)?
    /// Client side: the relay answered with an error status; the body is the reason.
    public private(set) var rejection: (status: Int, text: [UInt8])?
    public var onRejected: ((Int, String) -> Void)?

    private enum Tag: UInt32 { case receive = 1, write, readable, spliceIn }

    /// Splice mode: socket -> pipe -> connection, the payload never in user space.
    private let pipes: PipePool?
    private var pipe: Pipe?

    public init(stream: StreamID = -1, connection: Connection, pipes: PipePool? = nil) {
        self.stream = stream
        self.connection = connection
        self.pipes = pipes
        super.init()
        chunks.reserveCapacity(4)
    }

    /// The socket is connected: start moving bytes both ways.
    public func attach(_ fd: FileDescriptor) {
        self.fd = fd
        Sockets.noDelay(fd)
        receiveNext()
        writeNext()
    }

    // MARK: socket -> stream (DataSource)

    private func receiveNext() {
        guard fd >= 0, !finished, !upReceiving, !upEnded, upCount == 0 else { return }
        if held.isOver {
            // The connection holds all it may: read again once its peer or sockets took some.
            if !waitingForRoom {
                waitingForRoom = true
                held.wait { [weak self] in
                    self?.waitingForRoom = false
                    self?.receiveNext()
                }
            }
            return
        }
        upReceiving = true
        if pipes != nil {
            // Wait for bytes before taking a pipe: a quiet socket holds none.
            reactor.pollReadable(fd, handler: self, tag: Tag.readable.rawValue)
        } else {
            reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
        }
    }

    private func spliceIn() {
        guard let pipes else { return }
        if pipe == nil {
            guard let taken = try? pipes.take() else {
                // Out of descriptors for pipes (thousands of busy streams): this chunk goes
                // through a pooled buffer instead.
                reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
                return
            }
            pipe = taken
        }
        reactor.splice(from: fd, to: pipe!.write, count: pipes.capacity, socket: fd, handler: self, tag: Tag.spliceIn.rawValue)
    }

    public override func pendingBytes(limit: Int) -> (count: Int, endsBody: Bool) {
        if upCount > upTaken {
            let ready = min(limit, upCount - upTaken)
            return (ready, false)
        }
        if upEnded && !upEndTaken { return (0, true) }
        return (0, false)
    }

    public override func takePayload(count: Int) -> Payload {
        if count == 0 {
            // The empty DATA frame that carries END_STREAM.
            upEndTaken = true
            return .memory(UnsafeRawPointer(bitPattern: 1)!)
        }
        defer { upTaken += count }
        if let pipe { return .pipe(pipe.read) }
        return .memory(UnsafeRawPointer(buffers.pointer(upBuffer) + upTaken))
    }

    public override func payloadSent(count: Int) {
        upSent += count
        // After an abort the rest of the buffer will never be taken: what was taken is enough.
        guard upCount > 0, upSent == upCount || (finished && upSent == upTaken) else { return }
        releaseHeldUp()
        if let pipe {
            let emptied = upSent == upCount
            upCount = 0
            upTaken = 0
            upSent = 0
            if emptied && refill(pipe) { return }
            if emptied { pipes!.give(pipe) } else { pipes!.discard(pipe) }
            self.pipe = nil
        } else {
            buffers.release(upBuffer)
            upBuffer = BufferPool.none
        }
        upCount = 0
        upTaken = 0
        upSent = 0
        receiveNext()
        finishIfDone()
    }

    /// A busy socket usually has more bytes waiting when its last ones have left: splice them
    /// into the (now empty) pipe at once, without waiting for readiness first. Only when nothing
    /// is there does the pipe go back and the tunnel wait.
    private func refill(_ pipe: Pipe) -> Bool {
        guard fd >= 0, !finished, !streamClosed, !upEnded else { return false }
        let moved = pf_splice(fd, pipe.write, pipes!.capacity, pf_splice_move | pf_splice_nonblock)
        if moved > 0 {
            upCount = moved
            holdUp()
        } else if moved == 0 {
            pipes!.give(pipe)
            self.pipe = nil
            upEnded = true
        } else {
            let code = pf_errno()
            if code == EAGAIN || code == EINTR { return false }
            pipes!.give(pipe)
            self.pipe = nil
            abort(code: NGHTTP2_CANCEL.rawValue)
            return true
        }
        session.resume(stream)
        connection.flushSoon()
        return true
    }

    public override func payloadDropped(count: Int) {
        // The connection is gone with these bytes still queued: nothing will take them now.
        upSent += count
        guard upCount > 0, upSent == upTaken else { return }
        releaseHeldUp()
        if let pipe {
            pipes!.discard(pipe)
            self.pipe = nil
        } else if upBuffer != BufferPool.none {
            buffers.release(upBuffer)
            upBuffer = BufferPool.none
        }
        upCount = 0
        upTaken = 0
        upSent = 0
    }

    // MARK: stream -> socket

    /// DATA for this stream arrived.
    public func received(_ bytes: UnsafeRawBufferPointer) {
        if discarding || finished {
            if windowed { session.consume(stream, bytes.count) }
            if rejection != nil, rejection!.text.count < 4096 { rejection!.text.append(contentsOf: bytes) }
            return
        }
        downQueued += bytes.count
        held.add(bytes.count)
        if connection.isPlaceholder(bytes.baseAddress!) {
            // The payload was spliced into a pipe; these are its stand-ins.
            if let pipe = connection.claimSplicedPipe() {
                queuedPipes += 1
                chunks.append(Chunk(buffer: BufferPool.none, start: 0, end: bytes.count, pipe: pipe))
            } else if chunks.count > chunkHead, chunks[chunks.count - 1].pipe != nil {
                // nghttp2 handed the same spliced payload over in two pieces.
                chunks[chunks.count - 1].end += bytes.count
            } else {
                downQueued -= bytes.count
                held.remove(bytes.count)
                abort()
                return
            }
            writeNext()
            return
        }
        // Nothing queued: write straight from the buffer the bytes were received into.
        let buffer = connection.receivingBuffer
        if chunks.count == chunkHead, fd >= 0, buffer != BufferPool.none,
           bytes.baseAddress! >= UnsafeRawPointer(buffers.pointer(buffer)),
           bytes.baseAddress! + bytes.count <= UnsafeRawPointer(buffers.pointer(buffer) + buffers.bufferSize) {
            let start = bytes.baseAddress! - UnsafeRawPointer(buffers.pointer(buffer))
            buffers.retain(buffer)
            chunks.append(Chunk(buffer: buffer, start: start, end: start + bytes.count, shared: true))
            writeNext()
            return
        }
        var offset = 0
        let size = buffers.bufferSize
        while offset < bytes.count {
            if chunks.count == chunkHead || chunks[chunks.count - 1].shared || chunks[chunks.count - 1].pipe != nil
                || chunks[chunks.count - 1].end == size {
                chunks.append(Chunk(buffer: buffers.take(), start: 0, end: 0))
            }
            let last = chunks.count - 1
            let step = min(size - chunks[last].end, bytes.count - offset)
            (buffers.pointer(chunks[last].buffer) + chunks[last].end).copyMemory(from: bytes.baseAddress! + offset, byteCount: step)
            chunks[last].end += step
            offset += step
        }
        writeNext()
    }

    /// The peer sent END_STREAM.
    public func peerFinished() {
        peerEnded = true
        if let rejection {
            let text = String(decoding: rejection.text, as: UTF8.self).trimmed
            onRejected?(rejection.status, text.isEmpty ? "status \(rejection.status)" : text)
            onRejected = nil
            abort()
            return
        }
        writeNext()
    }

    /// Client side: the response head arrived.
    public func responded(status: Int) {
        guard status != 200 else { return }
        rejection = (status, [])
        dropQueued()
    }

    /// Relay side: the request is answered with an error; whatever the client sends is dropped.
    public func reject() { dropQueued() }

    private func dropQueued() {
        discarding = true
        if windowed { session.consume(stream, downQueued) }
        held.remove(downQueued)
        downQueued = 0
        for index in chunkHead..<chunks.count { releaseChunk(chunks[index], empty: false) }
        chunks.removeAll(keepingCapacity: true)
        chunkHead = 0
    }

    private func releaseChunk(_ chunk: Chunk, empty: Bool) {
        if let pipe = chunk.pipe {
            queuedPipes -= 1
            if empty { connection.pipes?.give(pipe) } else { connection.pipes?.discard(pipe) }
        } else {
            buffers.release(chunk.buffer)
        }
    }

    private func writeNext() {
        guard fd >= 0, !writing, !finished else { return }
        if chunkHead < chunks.count {
            let chunk = chunks[chunkHead]
            writing = true
            if let pipe = chunk.pipe {
                reactor.splice(from: pipe.read, to: fd, count: chunk.end - chunk.start, socket: fd,
                               handler: self, tag: Tag.write.rawValue)
                return
            }
            reactor.write(fd, from: buffers.pointer(chunk.buffer) + chunk.start, count: chunk.end - chunk.start,
                          handler: self, tag: Tag.write.rawValue)
            return
        }
        if peerEnded && !shutDown {
            shutDown = true
            Sockets.shutdownWrite(fd)
            finishIfDone()
        }
    }

    /// Whether DATA may arrive spliced: the socket is there and bytes will be written to it.
    public var acceptsSplice: Bool {
        fd >= 0 && !finished && !discarding && pipes != nil && queuedPipes < Self.maxQueuedPipes
    }

    /// The bytes just read from the socket (`upCount`) count against the connection's bound.
    private func holdUp() {
        upHeld = upCount
        held.add(upHeld)
    }

    private func releaseHeldUp() {
        if upHeld == 0 { return }
        let released = upHeld
        upHeld = 0
        held.remove(released)
    }

    // MARK: completions

    public func complete(_ completion: Completion) {
        if finished {
            if completion.buffer != BufferPool.none { buffers.release(completion.buffer) }
            return
        }
        switch Tag(rawValue: completion.tag) {
        case .receive:
            upReceiving = false
            if completion.result > 0 {
                upBuffer = completion.buffer
                upCount = Int(completion.result)
                holdUp()
            } else if completion.result == 0 {
                upEnded = true
            } else {
                abort(code: NGHTTP2_CANCEL.rawValue)
                return
            }
            session.resume(stream)
            connection.flushSoon()
        case .readable:
            spliceIn()
        case .spliceIn:
            upReceiving = false
            if completion.result > 0 {
                upCount = Int(completion.result)
                holdUp()
            } else if completion.result == 0 {
                pipes!.give(pipe!)
                pipe = nil
                upEnded = true
            } else if completion.result == -EAGAIN {
                // Nothing there after all: a quiet socket holds no pipe.
                pipes!.give(pipe!)
                pipe = nil
                receiveNext()
                return
            } else {
                abort(code: NGHTTP2_CANCEL.rawValue)
                return
            }
            session.resume(stream)
            connection.flushSoon()
        case .write:
            writing = false
            if completion.result < 0 {
                abort(code: NGHTTP2_CANCEL.rawValue)
                return
            }
            let written = Int(completion.result)
            chunks[chunkHead].start += written
            downQueued -= written
            held.remove(written)
            if chunks[chunkHead].start == chunks[chunkHead].end {
                releaseChunk(chunks[chunkHead], empty: true)
                chunkHead += 1
                if chunkHead == chunks.count {
                    chunks.removeAll(keepingCapacity: true)
                    chunkHead = 0
                }
            }
            if windowed { session.consume(stream, written) }
            connection.flushSoon()
            writeNext()
            finishIfDone()
        case nil:
            break
        }
    }

    // MARK: ending

    /// nghttp2 closed the stream: 0 when both sides ended it, else the peer's (or our) RST code.
    public func streamClosed(errorCode: UInt32) {
        streamClosed = true
        if errorCode != 0 {
            resetSocket()
            return
        }
        finishIfDone()
    }

    /// A socket error, or the end of the tunnel's purpose: reset both the stream and the socket.
    public func abort(code: UInt32 = NGHTTP2_CANCEL.rawValue) {
        if !streamClosed { session.reset(stream, code: code) }
        connection.flushSoon()
        resetSocket()
    }

    /// The connection under the stream is gone: nothing queued for it will be sent.
    public func connectionLost() {
        upTaken = upSent
        streamClosed = true
        resetSocket()
    }

    private func resetSocket() {
        if fd >= 0 { Sockets.resetOnClose(fd) }
        finish()
    }

    private func finishIfDone() {
        guard streamClosed, !finished else { return }
        if rejection != nil { return finish() }
        // Both directions ended cleanly: the last written byte closes the socket.
        if writing || chunkHead < chunks.count { return }
        if upCount > 0 && upTaken > upSent { return }
        finish()
    }

    private func finish() {
        if finished { return }
        finished = true
        if fd >= 0 { reactor.close(fd) }
        // Buffers and pipes the output queue still points into go back when their bytes are sent.
        if upTaken == upSent {
            if upBuffer != BufferPool.none {
                buffers.release(upBuffer)
                upBuffer = BufferPool.none
            }
            if let pipe {
                pipes!.discard(pipe)
                self.pipe = nil
            }
        }
        for index in chunkHead..<chunks.count { releaseChunk(chunks[index], empty: false) }
        chunks.removeAll()
        chunkHead = 0
        held.remove(downQueued)
        downQueued = 0
        // Bytes read from the socket and still queued for the connection stay counted until
        // they are sent or dropped (payloadSent / payloadDropped).
        if upTaken == upSent { releaseHeldUp() }
        let callback = onFinish
        onFinish = nil
        callback?(self)
    }
}
