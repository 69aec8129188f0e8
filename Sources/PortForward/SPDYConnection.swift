import CLinuxShim
import HTTP2
import Reactor
import SPDY
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A SPDY/3.1 connection driven through the reactor, in either role: the socket, an
/// `SPDYSession` (no I/O) for the framing, and the data streams of `portforward.k8s.io` pairs as
/// tunnels (`SPDYStream` their transport). The relay's side (`SPDYRelaySession`: answers a
/// kubectl's pairs and connects to the pod) and the client's (`SPDYClientSession`: opens a pair
/// per local connection) are subclasses that decide what a stream means; reading, writing,
/// splicing, the WebSocket tunnel, keepalive and closing are the same and live here.
///
/// SPDY has no flow control, so memory is bounded here: the connection stops reading while its
/// held bytes are over its limit, or while one of its streams holds a stream window's worth of
/// bytes its socket has not taken. The price is the kubelet's own: one slow socket stalls the
/// other streams of that connection (docs/PROTOCOL.md).
class SPDYConnection: SPDYSessionDelegate, CompletionHandler, DeferredTask {
    let fd: FileDescriptor
    let peer: String
    let reactor: ReactorBackend
    /// Splice mode (plain SPDY only: a WebSocket payload is masked one way and framed the other).
    let pipes: PipePool?
    let session: SPDYSession
    let held: HeldBytes
    private let output = OutputQueue()
    /// Forwarding data streams by id.
    var streams: [UInt32: SPDYStream] = [:]
    /// Streams with bytes (or their end) ready to send, oldest first.
    private var ready: [SPDYStream] = []
    /// Streams holding their bound of unwritten bytes.
    var streamsAtBound = 0
    let streamBound: Int
    private(set) var receiving = false
    private var writing = false
    private var scheduled = false
    private(set) var closed = false
    /// Close once the output is written: a GOAWAY after a protocol error, or the peer's.
    var closingReason: String?
    private var receivingBuffer = BufferPool.none
    /// Plain SPDY in splice mode: a DATA payload for a stream that takes pipes is spliced socket ->
    /// pipe, never read; after one, the next frame head is read alone (`headNext`), so that the
    /// next payload can be spliced whole instead of half read by a greedy receive.
    private var inPipe: Pipe?
    private var headNext = false
    private let head = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    /// Payloads smaller than this are read: a splice costs two system calls.
    static let spliceThreshold = 16 * 1024
    /// A DATA frame's 8-byte head is written here, then copied into the output queue.
    private let headerBytes = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    /// kubectl 1.31+'s tunnel: the SPDY bytes travel as the payloads of WebSocket binary messages
    /// (nil: plain SPDY). Each SPDY frame this side sends is one binary message.
    private var webSocket: ByteStream?
    private var webSocketEvents: [FrameEvent] = []
    private let webSocketHeader = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
    /// The client's messages are masked (RFC 6455 5.3): control bytes through this copy, DATA
    /// payloads in place in the tunnel's own buffer (which no one reads again).
    private let masks: Bool
    private var maskScratch: [UInt8] = []
    /// Keepalive and idle (docs/PROTOCOL.md, "Keepalive and idle sessions"), as on h2 sessions.
    private let keepalive: Keepalive?
    private let idleTimeout: Double
    private var tickTimer: TimerID = 0
    private var lastReceived: UInt64 = 0
    private var pingSent: UInt64 = 0
    private var idleSince: UInt64 = 0
    /// `end` was called: the socket closes at the next tick whether or not the peer read the GOAWAY.
    private var ending = false

    /// The most payload one DATA frame this side sends carries.
    let maxFramePayload: Int
    /// What the output queue may hold before the streams wait for it to drain.
    static let outputLimit = 2 << 20
    /// What the output queue may hold before the connection stops reading. DATA is queued only
    /// below `outputLimit` (plus one frame), so past this it is control frames the peer does not
    /// read: the echoes of its PINGs, pongs, RST_STREAMs its frames earned. Without it, a peer
    /// that sends PINGs and never reads grows this side without bound.
    static let maxQueuedBytes = 4 << 20

    enum Tag: UInt32 { case receive = 1, write, splice, pairTimer, tick, spliceIn, head }

    init(fd: FileDescriptor, peer: String, reactor: ReactorBackend, pipes: PipePool?, role: SPDYSession.Role,
         overWebSocket: Bool, maxHeldBytes: Int, streamBound: Int, keepalive: Keepalive?, idleTimeout: Double,
         maxFramePayload: Int) throws {
        self.fd = fd
        self.peer = peer
        self.reactor = reactor
        self.pipes = pipes
        session = try SPDYSession(role: role)
        held = HeldBytes(limit: maxHeldBytes)
        self.streamBound = streamBound
        self.maxFramePayload = maxFramePayload
        self.keepalive = keepalive.flatMap { $0.interval > 0 ? $0 : nil }
        self.idleTimeout = idleTimeout
        masks = overWebSocket && role == .client
        if overWebSocket {
            webSocket = ByteStream(role: role == .client ? .client : .server)
            webSocketEvents.reserveCapacity(16)
        }
        session.delegate = self
        Sockets.noDelay(fd)
        held.onBelowLimit = { [unowned self] in self.receiveNext() }
    }

    deinit {
        head.deallocate()
        headerBytes.deallocate()
        webSocketHeader.deallocate()
    }

    var overWebSocket: Bool { webSocket != nil }

    /// `initial`: bytes the peer sent behind the upgrade.
    func start(initial: UnsafeRawBufferPointer) {
        if initial.count > 0 {
            // Unmasking happens in place: the bytes behind the upgrade are copied first.
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: initial.count, alignment: 1)
            defer { copy.deallocate() }
            copy.copyMemory(from: initial)
            receive(copy)
        }
        lastReceived = Clock.nanoseconds()
        if keepalive != nil || idleTimeout > 0 { armTick() }
        receiveNext()
        flushSoon()
    }

    // MARK: what a role decides (overridden)

    /// A SYN_STREAM, SYN_REPLY, HEADERS, SETTINGS or WINDOW_UPDATE.
    func streamEvent(_ event: SPDYEvent) {}
    /// DATA, or its FIN, on a stream that carries no tunnel (an error stream).
    func otherData(stream: UInt32, _ bytes: UnsafeRawBufferPointer) {}
    func otherEnded(stream: UInt32) {}
    /// A stream was reset (by either side), before its tunnel hears of it.
    func streamReset(_ stream: UInt32) {}
    /// Streams or pairs are under way (the idle timeout does not run).
    var isBusy: Bool { !streams.isEmpty }
    func pairTimerFired() {}
    /// The connection is closing: before the tunnels hear of it.
    func willClose() {}
    func didClose(reason: String?) {}

    // MARK: reading

    func receiveNext() {
        if receiving || closed || closingReason != nil { return }
        if held.isOver || streamsAtBound > 0 || queuedBytes >= Self.maxQueuedBytes { return }
        receiving = true
        if webSocket == nil, let pipes {
            if headNext, session.headMissing > 0 {
                reactor.read(fd, into: head, count: session.headMissing, handler: self, tag: Tag.head.rawValue)
                return
            }
            let midSplice = headNext
            headNext = false
            let remaining = session.dataRemaining
            if remaining >= Self.spliceThreshold || (midSplice && remaining > 0),
               let stream = session.dataStream, let carrier = streams[stream], !carrier.closed, carrier.tunnel.acceptsSplice {
                if inPipe == nil { inPipe = try? pipes.take() }
                if let pipe = inPipe {
                    reactor.splice(from: fd, to: pipe.write, count: min(remaining, pipes.capacity), socket: fd,
                                   handler: self, tag: Tag.spliceIn.rawValue)
                    return
                }
            }
        }
        reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
    }

    /// `count` payload bytes of the current DATA frame are in `inPipe`: the stream's tunnel takes
    /// the pipe, and the session hears of the bytes as skipped.
    private func spliced(_ count: Int) {
        guard let pipe = inPipe else { return }
        inPipe = nil
        headNext = true
        // The stream may have been reset while the splice was under way: the bytes are still the
        // frame's, and the session must count them.
        if let stream = session.dataStream, let carrier = streams[stream], !carrier.closed {
            let before = carrier.unwritten
            carrier.unwritten += count
            if before < streamBound && carrier.unwritten >= streamBound { streamsAtBound += 1 }
            carrier.tunnel.received(.spliced(pipe, count: count))
        } else {
            pipes?.discard(pipe)
        }
        do { try session.skipData(count) } catch { closingReason = "\(error)" }
    }

    /// Bytes waiting to be written: the output queue's, and the session's frames not yet moved
    /// there (while a write is under way, they gather in the session).
    private var queuedBytes: Int { output.queuedBytes + session.pendingOutput }

    /// Bytes read from the socket: SPDY, or WebSocket frames whose binary payloads are SPDY.
    private func receive(_ bytes: UnsafeMutableRawBufferPointer) {
        guard webSocket != nil else { return deliver(UnsafeRawBufferPointer(bytes)) }
        webSocketEvents.removeAll(keepingCapacity: true)
        webSocket!.receive(bytes, into: &webSocketEvents)
        for event in webSocketEvents {
            switch event {
            case .payload(let range):
                if closingReason == nil { deliver(UnsafeRawBufferPointer(rebasing: bytes[range])) }
            case .ping, .close, .failed:
                if let answer = event.answer { appendAnswer(answer) }
                if case .close = event { closingReason = Connection.closedByPeer }
                if case .failed(let error) = event { closingReason = "WebSocket: \(error)" }
            case .messageStart, .messageEnd, .pong:
                break
            }
        }
    }

    private func deliver(_ bytes: UnsafeRawBufferPointer) {
        do {
            try session.receive(bytes)
        } catch {
            // The session queued a GOAWAY: write it, then close.
            closingReason = "\(error)"
        }
    }

    func complete(_ completion: Completion) {
        if closed {
            if completion.buffer != BufferPool.none { reactor.buffers.release(completion.buffer) }
            return
        }
        switch Tag(rawValue: completion.tag) {
        case .receive:
            receiving = false
            guard completion.result > 0 else {
                return close(reason: completion.result == 0 ? Connection.closedByPeer : SystemError.reason(-completion.result))
            }
            lastReceived = Clock.nanoseconds()
            receivingBuffer = completion.buffer
            receive(UnsafeMutableRawBufferPointer(start: reactor.buffers.pointer(completion.buffer), count: Int(completion.result)))
            receivingBuffer = BufferPool.none
            reactor.buffers.release(completion.buffer)
            if closed { return }
            receiveNext()
            flushSoon()
        case .spliceIn:
            receiving = false
            guard completion.result > 0 else {
                if completion.result == -EAGAIN { return receiveNext() }
                return close(reason: completion.result == 0 ? Connection.closedByPeer : SystemError.reason(-completion.result))
            }
            lastReceived = Clock.nanoseconds()
            spliced(Int(completion.result))
            if closed { return }
            receiveNext()
            flushSoon()
        case .head:
            receiving = false
            guard completion.result > 0 else {
                if completion.result == -EAGAIN { return receiveNext() }
                return close(reason: completion.result == 0 ? Connection.closedByPeer : SystemError.reason(-completion.result))
            }
            lastReceived = Clock.nanoseconds()
            deliver(UnsafeRawBufferPointer(start: head, count: Int(completion.result)))
            if closed { return }
            receiveNext()
            flushSoon()
        case .write, .splice:
            writing = false
            if completion.result < 0 { return close(reason: SystemError.reason(-completion.result)) }
            output.advance(Int(completion.result))
            receiveNext()
            flushSoon()
        case .pairTimer:
            pairTimerFired()
        case .tick:
            tick()
        case nil:
            break
        }
    }

    // MARK: session events

    func session(_ session: SPDYSession, _ event: SPDYEvent) {
        switch event {
        case .data(let stream, let bytes):
            guard let carrier = streams[stream] else { return otherData(stream: stream, bytes) }
            if !carrier.closed { received(bytes, on: carrier) }
        case .peerEnded(let stream):
            guard let carrier = streams[stream] else { return otherEnded(stream: stream) }
            carrier.peerEnded = true
            carrier.tunnel.peerEnded()
            closeIfDone(carrier)
        case .reset(let stream, let status, _):
            streamReset(stream)
            if let carrier = streams[stream], !carrier.closed {
                carrier.closed = true
                carrier.tunnel.streamClosed(errorCode: max(1, status.rawValue))
            }
        case .goAway:
            closingReason = Connection.closedByPeer
        case .ping(_, let isReply):
            if isReply { pingSent = 0 }
        case .synStream, .synReply, .headers, .settings, .windowUpdate:
            streamEvent(event)
        }
    }

    func received(_ bytes: UnsafeRawBufferPointer, on carrier: SPDYStream) {
        let before = carrier.unwritten
        carrier.unwritten += bytes.count
        if before < streamBound && carrier.unwritten >= streamBound { streamsAtBound += 1 }
        var buffer = receivingBuffer
        if buffer != BufferPool.none {
            let start = UnsafeRawPointer(reactor.buffers.pointer(buffer))
            if !(bytes.baseAddress! >= start && bytes.baseAddress! + bytes.count <= start + reactor.buffers.bufferSize) {
                buffer = BufferPool.none
            }
        }
        carrier.tunnel.received(.bytes(bytes, buffer: buffer))
    }

    // MARK: streams

    /// A tunnel whose data stream is `carrier`, in the table of streams.
    func add(_ carrier: SPDYStream, pipes: PipePool?) -> Tunnel {
        let tunnel = Tunnel(transport: carrier, reactor: reactor, pipes: pipes)
        carrier.tunnel = tunnel
        streams[carrier.stream] = carrier
        return tunnel
    }

    /// The tunnel of `carrier` finished: the stream leaves the table, its bound is undone, and
    /// the error stream ends (kubectl closes its local socket only once the error stream has ended).
    func finished(_ carrier: SPDYStream) {
        if streams[carrier.stream] === carrier { streams[carrier.stream] = nil }
        if carrier.unwritten >= streamBound { streamsAtBound -= 1 }
        carrier.unwritten = 0
        endErrorStream(carrier)
        receiveNext()
        flushSoon()
    }

    func endErrorStream(_ carrier: SPDYStream) {
        if carrier.errorEnded { return }
        carrier.errorEnded = true
        if session.isWritable(carrier.pair.errorStream) { try? session.finish(stream: carrier.pair.errorStream) }
    }

    func endDataStream(_ carrier: SPDYStream) {
        if carrier.dataEnded { return }
        carrier.dataEnded = true
        if session.isWritable(carrier.stream) { try? session.finish(stream: carrier.stream) }
        closeIfDone(carrier)
    }

    /// Both sides ended the data stream: the tunnel's stream is closed cleanly.
    private func closeIfDone(_ carrier: SPDYStream) {
        guard carrier.dataEnded, carrier.peerEnded, !carrier.closed else { return }
        carrier.closed = true
        carrier.tunnel.streamClosed(errorCode: 0)
    }

    // MARK: from the streams

    func ready(_ carrier: SPDYStream) {
        if !carrier.listed {
            carrier.listed = true
            ready.append(carrier)
        }
        flushSoon()
    }

    func written(_ carrier: SPDYStream, _ count: Int) {
        let before = carrier.unwritten
        carrier.unwritten -= count
        if before >= streamBound && carrier.unwritten < streamBound {
            streamsAtBound -= 1
            receiveNext()
        }
    }

    /// The tunnel gave up (a socket error, a shutdown): both streams end at once.
    func abandon(_ carrier: SPDYStream) {
        endErrorStream(carrier)
        if !carrier.closed {
            carrier.closed = true
            if session.isOpen(carrier.stream) { session.reset(stream: carrier.stream, status: .cancel) }
        }
        flushSoon()
    }

    // MARK: keepalive and idle

    /// A quarter of the shortest interval: a silent peer is noticed within interval + timeout +
    /// two ticks (as on h2 sessions).
    private var tickNanoseconds: UInt64 {
        var seconds = idleTimeout > 0 ? idleTimeout : .infinity
        if let keepalive { seconds = min(seconds, keepalive.interval, keepalive.timeout) }
        return UInt64(max(seconds / 4, 0.05) * 1e9)
    }

    private func armTick() {
        tickTimer = reactor.timer(nanoseconds: tickNanoseconds, handler: self, tag: Tag.tick.rawValue)
    }

    private func tick() {
        if ending { return close(reason: closingReason) }
        let now = Clock.nanoseconds()
        if let keepalive {
            if !receiving && (held.isOver || streamsAtBound > 0) {
                // Not reading because a socket is slow (SPDY's only back-pressure): the peer may
                // well be answering; its silence is ours.
                lastReceived = now
                pingSent = 0
            }
            if pingSent != 0, now - pingSent >= UInt64(keepalive.timeout * 1e9) {
                return end(reason: "no answer to PING within \(keepalive.timeout.formatted1) s")
            }
            if pingSent == 0, now - lastReceived >= UInt64(keepalive.interval * 1e9) {
                pingSent = now
                _ = session.ping()
                flushSoon()
            }
        }
        if idleTimeout > 0 {
            if isBusy {
                idleSince = 0
            } else if idleSince == 0 {
                idleSince = now
            } else if now - idleSince >= UInt64(idleTimeout * 1e9) {
                return end(reason: "no stream for \(idleTimeout.formatted1) s (idle timeout)")
            }
        }
        armTick()
    }

    /// GOAWAY says why, if the peer still reads; the socket closes a second later either way.
    func end(reason: String) {
        ending = true
        session.goAway()
        closingReason = reason
        flushSoon()
        tickTimer = reactor.timer(nanoseconds: 1_000_000_000, handler: self, tag: Tag.tick.rawValue)
    }

    // MARK: writing

    func flushSoon() {
        if scheduled || closed { return }
        scheduled = true
        reactor.schedule(self)
    }

    func runDeferred() {
        scheduled = false
        guard !closed, !writing else { return }
        fill()
        if output.isEmpty {
            if let reason = closingReason { close(reason: reason) }
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

    /// The session's control frames, then DATA from the ready streams, in the session's order:
    /// its pending output always goes before a DATA frame's head and whole payload.
    private func fill() {
        takeControl()
        while let carrier = ready.first, output.queuedBytes < Self.outputLimit {
            let (count, endsBody) = carrier.closed ? (0, false) : carrier.tunnel.pendingBytes(limit: maxFramePayload)
            if count > 0, let header = try? session.dataHeader(stream: carrier.stream, count: count, fin: false) {
                takeControl()
                header.write(to: headerBytes)
                let payload = carrier.takePayload(count: count)
                if let mask = frameMessage(8 + count) {
                    // One message: the mask runs over the SPDY head, then on over the payload, in
                    // place in the tunnel's own buffer (a client's tunnels take no pipes).
                    var running = Mask(key: mask)
                    running.apply(UnsafeMutableRawBufferPointer(start: headerBytes, count: 8))
                    if case .memory(let pointer) = payload {
                        running.apply(UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(mutating: pointer), count: count))
                    }
                }
                output.append(bytes: headerBytes, count: 8)
                output.append(payload: payload, count: count, source: carrier)
                continue
            }
            if endsBody {
                // The socket ended its side: FIN on the error stream (the relay's; the client
                // ended its own at the start), then on the data stream.
                _ = carrier.tunnel.take(0)
                endErrorStream(carrier)
                endDataStream(carrier)
                takeControl()
            }
            carrier.listed = false
            ready.removeFirst()
        }
    }

    private func takeControl() {
        guard session.pendingOutput > 0 else { return }
        session.withPendingOutput { bytes in appendControl(bytes) }
        session.consumeOutput(session.pendingOutput)
    }

    /// SPDY control bytes: as they are, or in the tunnel as one binary message (masked by a client).
    private func appendControl(_ bytes: UnsafeRawBufferPointer) {
        guard let mask = frameMessage(bytes.count) else {
            return output.append(bytes: bytes.baseAddress!, count: bytes.count)
        }
        maskScratch.removeAll(keepingCapacity: true)
        maskScratch.append(contentsOf: bytes)
        var running = Mask(key: mask)
        maskScratch.withUnsafeMutableBytes { running.apply($0) }
        maskScratch.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
    }

    /// A WebSocket pong or close in answer to the peer's frame (a client's masked).
    private func appendAnswer(_ frame: [UInt8]) {
        let bytes = masks ? FrameWriter.masked(frame, key: UInt32.random(in: 0...UInt32.max)) : frame
        bytes.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
    }

    /// In the WebSocket tunnel, the next `count` bytes of output are one binary message: its
    /// header goes out now; for a client, with the masking key, which is returned.
    private func frameMessage(_ count: Int) -> UInt32? {
        guard webSocket != nil else { return nil }
        let mask: UInt32? = masks ? UInt32.random(in: 0...UInt32.max) : nil
        let length = ByteStream.header(payloadLength: count, mask: mask, into: webSocketHeader)
        output.append(bytes: webSocketHeader.baseAddress!, count: length)
        return mask
    }

    // MARK: ending

    /// GOAWAY, and in the WebSocket tunnel a close (1000) behind it, as kubectl ends; the
    /// connection closes once they are written.
    func finish(reason: String) {
        session.goAway()
        closingReason = reason
        if webSocket != nil {
            takeControl()
            appendAnswer(FrameWriter.close(code: CloseCode.normal))
        }
        flushSoon()
    }

    func close(reason: String?) {
        if closed { return }
        closed = true
        willClose()
        reactor.cancelTimer(tickTimer)
        for carrier in Array(streams.values) {
            carrier.closed = true
            carrier.tunnel.connectionLost()
        }
        streams.removeAll()
        ready.removeAll()
        // Payloads queued for the socket go back once no cancelled write can read them.
        let pipe = inPipe
        inPipe = nil
        reactor.close(fd) { [output, pipes] in
            output.discard()
            if let pipe { pipes?.discard(pipe) }
        }
        didClose(reason: reason)
    }
}
