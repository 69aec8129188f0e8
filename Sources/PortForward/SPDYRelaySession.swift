import CLinuxShim
import HTTP2
import Reactor
import SPDY
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One kubectl port-forward connection over plain SPDY/3.1 (`portforward.k8s.io`): the upgraded
/// socket, driven through the reactor, with an `SPDYSession` (no I/O) for the framing. Each
/// local connection of kubectl's is an error/data stream pair (`PortForwardPairs`); a complete
/// pair becomes a `Tunnel` to the pod's port, its data stream an `SPDYStream`.
///
/// SPDY has no flow control, so memory is bounded here: the connection stops reading while its
/// held bytes are over `--max-held-bytes`, or while one of its streams holds a stream window's
/// worth (2 MiB) of bytes its pod has not taken. The price is the kubelet's own: one slow pod
/// socket stalls the other streams of that connection (docs/PROTOCOL.md).
final class SPDYRelaySession: SPDYSessionDelegate, CompletionHandler, DeferredTask, OpenQueue {
    let fd: FileDescriptor
    let peer: String
    let pod: Pod
    unowned let relay: Relay
    let session: SPDYSession
    let held: HeldBytes
    private let output = OutputQueue()
    private var pairs = PortForwardPairs()
    /// Forwarding data streams by id.
    private var streams: [UInt32: SPDYStream] = [:]
    /// Streams with bytes (or their end) ready to send, oldest first.
    private var ready: [SPDYStream] = []
    private var attempts: [UInt32: ConnectAttempt] = [:]
    /// Complete pairs waiting for their turn to connect (`OpenScheduler`: the same per-connection
    /// and per-peer stream-open buckets as h2 streams), oldest first.
    private var waitingOpens: WaitingOpens<SPDYStream>
    var inOpenScheduler = false
    /// Streams holding their bound of unwritten bytes.
    private var streamsAtBound = 0
    private let streamBound: Int
    private var receiving = false
    private var writing = false
    private var scheduled = false
    private var closed = false
    /// Close once the output is written: a GOAWAY after a protocol error, or the peer's.
    private var closingReason: String?
    private var receivingBuffer = BufferPool.none
    /// Plain SPDY in splice mode: a DATA payload for a stream that takes pipes is spliced socket ->
    /// pipe, never read; after one, the next frame head is read alone (`headNext`), so that the
    /// next payload can be spliced whole instead of half read by a greedy receive.
    private var inPipe: Pipe?
    private var headNext = false
    private let head = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    /// Payloads smaller than this are read: a splice costs two system calls.
    static let spliceThreshold = 16 * 1024
    private var pairTimer: TimerID = 0
    /// A DATA frame's 8-byte head is written here, then copied into the output queue.
    private let headerBytes = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
    /// kubectl 1.31+'s tunnel: the SPDY bytes travel as the payloads of WebSocket binary messages
    /// (nil: plain SPDY). Each SPDY frame this side sends is one binary message.
    private var webSocket: ByteStream?
    private var webSocketEvents: [FrameEvent] = []
    private let webSocketHeader = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
    private var pairTimerDeadline: UInt64 = 0
    /// Keepalive and idle (docs/PROTOCOL.md, "Keepalive and idle sessions"), as on h2 sessions.
    private let keepalive: Keepalive?
    private let idleTimeout: Double
    private var tickTimer: TimerID = 0
    private var lastReceived: UInt64 = 0
    private var pingSent: UInt64 = 0
    private var idleSince: UInt64 = 0
    /// `end` was called: the socket closes at the next tick whether or not the peer read the GOAWAY.
    private var ending = false

    /// The most payload one DATA frame carries (the HTTP/2 side's frame size).
    static let maxFramePayload = 256 * 1024
    /// What the output queue may hold before the streams wait for it to drain.
    static let outputLimit = 2 << 20
    /// What the output queue may hold before the connection stops reading. DATA is queued only
    /// below `outputLimit` (plus one frame), so past this it is control frames the peer does not
    /// read: the echoes of its PINGs, pongs, RST_STREAMs its frames earned. Without it, a client
    /// that sends PINGs and never reads grows the relay without bound.
    static let maxQueuedBytes = 4 << 20

    private enum Tag: UInt32 { case receive = 1, write, splice, pairTimer, tick, spliceIn, head }

    init(fd: FileDescriptor, peer: String, pod: Pod, relay: Relay, overWebSocket: Bool = false) throws {
        self.fd = fd
        self.peer = peer
        self.pod = pod
        self.relay = relay
        session = try SPDYSession()
        waitingOpens = WaitingOpens(rate: relay.limits.streamOpenRate)
        held = HeldBytes(limit: relay.limits.maxHeldBytesPerConnection)
        streamBound = Int(relay.settings.streamWindow)
        keepalive = relay.limits.keepalive.interval > 0 ? relay.limits.keepalive : nil
        idleTimeout = relay.limits.idleTimeout
        if overWebSocket {
            webSocket = ByteStream()
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

    /// `initial`: bytes the client sent behind its upgrade request.
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

    // MARK: reading

    private func receiveNext() {
        if receiving || closed || closingReason != nil { return }
        if held.isOver || streamsAtBound > 0 || queuedBytes >= Self.maxQueuedBytes { return }
        receiving = true
        if webSocket == nil, let pipes = relay.pipes {
            if headNext, session.headMissing > 0 {
                relay.reactor.read(fd, into: head, count: session.headMissing, handler: self, tag: Tag.head.rawValue)
                return
            }
            let midSplice = headNext
            headNext = false
            let remaining = session.dataRemaining
            if remaining >= Self.spliceThreshold || (midSplice && remaining > 0),
               let stream = session.dataStream, let carrier = streams[stream], !carrier.closed, carrier.tunnel.acceptsSplice {
                if inPipe == nil { inPipe = try? pipes.take() }
                if let pipe = inPipe {
                    relay.reactor.splice(from: fd, to: pipe.write, count: min(remaining, pipes.capacity), socket: fd,
                                         handler: self, tag: Tag.spliceIn.rawValue)
                    return
                }
            }
        }
        relay.reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
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
            relay.pipes?.discard(pipe)
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
                if let answer = event.answer {
                    answer.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
                }
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
            if completion.buffer != BufferPool.none { relay.reactor.buffers.release(completion.buffer) }
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
            receive(UnsafeMutableRawBufferPointer(start: relay.reactor.buffers.pointer(completion.buffer), count: Int(completion.result)))
            receivingBuffer = BufferPool.none
            relay.reactor.buffers.release(completion.buffer)
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
            pairTimerDeadline = 0
            expirePairs()
        case .tick:
            tick()
        case nil:
            break
        }
    }

    // MARK: session events

    func session(_ session: SPDYSession, _ event: SPDYEvent) {
        switch event {
        case .synStream(let stream, _, _, let headers, _):
            switch pairs.opened(stream: stream, headers: headers, now: Clock.nanoseconds()) {
            case .reply:
                reply(stream)
            case .replyAndForward(let pair):
                reply(stream)
                forward(pair)
            case .reset(let status, let reason):
                relay.limitedLog("\(peer): SPDY stream \(stream) reset: \(reason)")
                session.reset(stream: stream, status: status)
            }
            armPairTimer()
        case .data(let stream, let bytes):
            // The error stream's (empty) data, or a stream already gone: nothing to do.
            guard let carrier = streams[stream], !carrier.closed else { return }
            received(bytes, on: carrier)
        case .peerEnded(let stream):
            guard let carrier = streams[stream] else { return }
            carrier.peerEnded = true
            carrier.tunnel.peerEnded()
            closeIfDone(carrier)
        case .reset(let stream, let status, _):
            pairs.streamGone(stream)
            if let carrier = streams[stream], !carrier.closed {
                carrier.closed = true
                if let attempt = attempts.removeValue(forKey: stream) { attempt.cancel() }
                carrier.tunnel.streamClosed(errorCode: max(1, status.rawValue))
            }
        case .goAway:
            closingReason = Connection.closedByPeer
        case .ping(_, let isReply):
            if isReply { pingSent = 0 }
        case .headers, .settings, .windowUpdate:
            break
        }
    }

    private func reply(_ stream: UInt32) {
        do {
            try session.synReply(stream: stream)
        } catch {
            relay.limitedLog("\(peer): SPDY stream \(stream): cannot reply: \(error)")
            session.reset(stream: stream, status: .internalError)
        }
    }

    private func received(_ bytes: UnsafeRawBufferPointer, on carrier: SPDYStream) {
        let before = carrier.unwritten
        carrier.unwritten += bytes.count
        if before < streamBound && carrier.unwritten >= streamBound { streamsAtBound += 1 }
        var buffer = receivingBuffer
        if buffer != BufferPool.none {
            let start = UnsafeRawPointer(relay.reactor.buffers.pointer(buffer))
            if !(bytes.baseAddress! >= start && bytes.baseAddress! + bytes.count <= start + relay.reactor.buffers.bufferSize) {
                buffer = BufferPool.none
            }
        }
        carrier.tunnel.received(.bytes(bytes, buffer: buffer))
    }

    // MARK: forwarding

    private func forward(_ pair: PortForwardPairs.Pair) {
        let carrier = SPDYStream(owner: self, pair: pair)
        let tunnel = Tunnel(transport: carrier, reactor: relay.reactor, pipes: relay.pipes)
        carrier.tunnel = tunnel
        let stream = pair.dataStream
        streams[stream] = carrier
        relay.streams += 1
        tunnel.onFinish = { [unowned self] _ in
            if let attempt = self.attempts.removeValue(forKey: stream) { attempt.cancel() }
            if self.streams[stream] === carrier { self.streams[stream] = nil }
            if carrier.unwritten >= self.streamBound { self.streamsAtBound -= 1 }
            carrier.unwritten = 0
            self.relay.streams -= 1
            self.relay.endedSinceTrim += 1
            self.pairs.forwardEnded(pair)
            // kubectl closes its local socket only once the error stream has ended.
            self.endErrorStream(carrier)
            self.receiveNext()
            self.flushSoon()
        }
        if relay.streams > relay.limits.maxStreams {
            return fail(carrier, Refusal.tooManyStreams(limit: relay.limits.maxStreams).text)
        }
        waitingOpens.append(carrier)
        relay.opens.enqueue(self)
    }

    var hasWaitingOpens: Bool { !waitingOpens.isEmpty }

    func startWaitingOpens(limit: Int) -> (started: Int, wait: UInt64) {
        var started = 0
        let now = Clock.nanoseconds()
        while started < limit {
            // Reset (or its connection lost) while it waited: nothing to undo.
            switch waitingOpens.next(now: now, peerWait: relay.peerTokenWait(peer, now: now),
                                     isGone: { [closed] in closed || $0.tunnel.finished }) {
            case .empty: return (started, 0)
            case .wait(let nanoseconds): return (started, nanoseconds)
            case .start(let carrier):
                relay.takePeerToken(peer, now: now)
                started += 1
                connect(carrier)
            }
        }
        return (started, 0)
    }

    private func connect(_ carrier: SPDYStream) {
        let pair = carrier.pair
        let stream = pair.dataStream
        let tunnel = carrier.tunnel!
        var answered = false
        let attempt = relay.connector.connect(pod: pod, port: Int(pair.port)) { [unowned self] result in
            answered = true
            self.attempts[stream] = nil
            switch result {
            case .connected, .joined:
                let late = tunnel.finished
                result.attach(tunnel)
                if late { return }
            case .failed(let refusal):
                self.fail(carrier, refusal.text)
            }
            self.flushSoon()
        }
        if !answered { attempts[stream] = attempt }
    }

    /// The forward cannot be made: the reason on the error stream, then both streams end (the
    /// order kubelet uses: error stream first).
    private func fail(_ carrier: SPDYStream, _ text: String) {
        carrier.tunnel.refused()
        if !carrier.errorEnded, session.isWritable(carrier.pair.errorStream) {
            try? session.sendData(stream: carrier.pair.errorStream, Array(text.utf8), fin: true)
        }
        carrier.errorEnded = true
        endDataStream(carrier)
        flushSoon()
    }

    private func endErrorStream(_ carrier: SPDYStream) {
        if carrier.errorEnded { return }
        carrier.errorEnded = true
        if session.isWritable(carrier.pair.errorStream) { try? session.finish(stream: carrier.pair.errorStream) }
    }

    private func endDataStream(_ carrier: SPDYStream) {
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

    // MARK: pairing timeout

    private func armPairTimer() {
        guard let deadline = pairs.nextDeadline else { return }
        if pairTimerDeadline != 0 && pairTimerDeadline <= deadline { return }
        if pairTimerDeadline != 0 { relay.reactor.cancelTimer(pairTimer) }
        let now = Clock.nanoseconds()
        pairTimerDeadline = deadline
        pairTimer = relay.reactor.timer(nanoseconds: deadline > now ? deadline - now : 0, handler: self, tag: Tag.pairTimer.rawValue)
    }

    private func expirePairs() {
        for expiry in pairs.expire(now: Clock.nanoseconds()) {
            if let errorStream = expiry.errorStream, session.isWritable(errorStream) {
                try? session.sendData(stream: errorStream, Array(expiry.message.utf8), fin: true)
            }
            if let dataStream = expiry.dataStream { session.reset(stream: dataStream, status: .cancel) }
        }
        armPairTimer()
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
        tickTimer = relay.reactor.timer(nanoseconds: tickNanoseconds, handler: self, tag: Tag.tick.rawValue)
    }

    private func tick() {
        if ending { return close(reason: closingReason) }
        let now = Clock.nanoseconds()
        if let keepalive {
            if !receiving && (held.isOver || streamsAtBound > 0) {
                // Not reading because a pod is slow (SPDY's only back-pressure): the peer may
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
            if !streams.isEmpty || pairs.count > 0 {
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
    private func end(reason: String) {
        ending = true
        session.goAway()
        closingReason = reason
        flushSoon()
        tickTimer = relay.reactor.timer(nanoseconds: 1_000_000_000, handler: self, tag: Tag.tick.rawValue)
    }

    // MARK: writing

    func flushSoon() {
        if scheduled || closed { return }
        scheduled = true
        relay.reactor.schedule(self)
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
            relay.reactor.splice(from: pipe, to: fd, count: next.pipeCount, socket: fd, handler: self, tag: Tag.splice.rawValue)
        } else {
            relay.reactor.writev(fd, vectors: output.vectors, count: next.vectorCount, handler: self, tag: Tag.write.rawValue)
        }
    }

    /// The session's control frames, then DATA from the ready streams, in the session's order:
    /// its pending output always goes before a DATA frame's head and whole payload.
    private func fill() {
        takeControl()
        while let carrier = ready.first, output.queuedBytes < Self.outputLimit {
            let (count, endsBody) = carrier.closed ? (0, false) : carrier.tunnel.pendingBytes(limit: Self.maxFramePayload)
            if count > 0, let header = try? session.dataHeader(stream: carrier.stream, count: count, fin: false) {
                takeControl()
                frameMessage(8 + count)
                header.write(to: headerBytes)
                output.append(bytes: headerBytes, count: 8)
                output.append(payload: carrier.takePayload(count: count), count: count, source: carrier)
                continue
            }
            if endsBody {
                // The pod ended its side: FIN on the error stream, then on the data stream.
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
        frameMessage(session.pendingOutput)
        session.withPendingOutput { bytes in output.append(bytes: bytes.baseAddress!, count: bytes.count) }
        session.consumeOutput(session.pendingOutput)
    }

    /// In the WebSocket tunnel, the next `count` bytes of output are one binary message.
    private func frameMessage(_ count: Int) {
        guard webSocket != nil else { return }
        let length = ByteStream.header(payloadLength: count, into: webSocketHeader)
        output.append(bytes: webSocketHeader.baseAddress!, count: length)
    }

    // MARK: ending

    /// The relay stops: say GOAWAY and close once it is written.
    func stop() {
        session.goAway()
        closingReason = "relay stopping"
        flushSoon()
    }

    func close(reason: String?) {
        if closed { return }
        closed = true
        relay.reactor.cancelTimer(pairTimer)
        relay.reactor.cancelTimer(tickTimer)
        for attempt in attempts.values { attempt.cancel() }
        attempts.removeAll()
        for carrier in Array(streams.values) {
            carrier.closed = true
            carrier.tunnel.connectionLost()
        }
        streams.removeAll()
        ready.removeAll()
        waitingOpens.removeAll()
        // Payloads queued for the socket go back once no cancelled write can read them.
        let pipe = inPipe
        inPipe = nil
        relay.reactor.close(fd) { [output, pipes = relay.pipes] in
            output.discard()
            if let pipe { pipes?.discard(pipe) }
        }
        relay.spdySessionClosed(self, reason: reason)
    }
}
