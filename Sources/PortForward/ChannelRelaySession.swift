import CLinuxShim
import HTTP2
import Reactor
import WebSocket
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// One port-forward over the Kubernetes WebSocket channel protocol (`v4.channel.k8s.io`, or
/// `v4.base64.channel.k8s.io`; the official client libraries speak it): `?ports=80,81` names the
/// pod ports, each one connection, on channels 2i (data) and 2i+1 (errors). The relay connects
/// every port at once, announces each port on both its channels, and joins each to a `Tunnel`
/// whose transport is a `ChannelStream`. The protocol has no half-close and no flow control: a
/// port's connection ends with the WebSocket, and the connection stops reading while a port holds
/// a stream window's worth (2 MiB) its pod has not taken, as SPDY connections do.
final class ChannelRelaySession: CompletionHandler, DeferredTask {
    let fd: FileDescriptor
    let peer: String
    let pod: Pod
    unowned let relay: Relay
    let held: HeldBytes
    private var channels: ChannelProtocol
    private let output = OutputQueue()
    private var streams: [ChannelStream] = []
    private var ready: [ChannelStream] = []
    private var attempts: [Int: ConnectAttempt] = [:]
    private var events: [ChannelEvent] = []
    private var streamsAtBound = 0
    private let streamBound: Int
    private var receiving = false
    private var writing = false
    private var scheduled = false
    private var closed = false
    private var closingReason: String?
    private var receivingBuffer = BufferPool.none
    /// A message's frame header and channel byte are written here, then copied into the output.
    private let prefix = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)

    /// The most payload one message carries.
    static let maxMessagePayload = 256 * 1024
    static let outputLimit = 2 << 20
    /// Past this much waiting output the connection stops reading: beyond `outputLimit` it can
    /// only be answers to the peer's pings or closes, which a peer that does not read would
    /// otherwise pile up without bound (as on SPDY sessions).
    static let maxQueuedBytes = 4 << 20

    /// Keepalive, as on h2 and SPDY sessions: a WebSocket PING after `interval` without a byte
    /// from the peer, and the end of the session when no pong (or anything) came within `timeout`.
    private let keepalive: Keepalive?
    private var tickTimer: TimerID = 0
    private var lastReceived: UInt64 = 0
    private var pingSent: UInt64 = 0

    private enum Tag: UInt32 { case receive = 1, write, splice, tick }

    init(fd: FileDescriptor, peer: String, pod: Pod, relay: Relay, encoding: ChannelEncoding, ports: [UInt16]) {
        self.fd = fd
        self.peer = peer
        self.pod = pod
        self.relay = relay
        channels = ChannelProtocol(encoding: encoding, ports: ports)
        held = HeldBytes(limit: relay.limits.maxHeldBytesPerConnection)
        streamBound = Int(relay.settings.streamWindow)
        keepalive = relay.limits.keepalive.interval > 0 ? relay.limits.keepalive : nil
        events.reserveCapacity(16)
        Sockets.noDelay(fd)
        held.onBelowLimit = { [unowned self] in self.receiveNext() }
    }

    deinit { prefix.deallocate() }

    func start(initial: UnsafeRawBufferPointer) {
        let announcements = channels.portAnnouncements()
        announcements.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
        for index in channels.ports.indices { forward(index) }
        if initial.count > 0 {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: initial.count, alignment: 1)
            defer { copy.deallocate() }
            copy.copyMemory(from: initial)
            receive(copy)
        }
        lastReceived = Clock.nanoseconds()
        if let keepalive {
            tickTimer = relay.reactor.timer(nanoseconds: Self.tickNanoseconds(keepalive), handler: self, tag: Tag.tick.rawValue)
        }
        receiveNext()
        flushSoon()
    }

    // MARK: keepalive

    private static func tickNanoseconds(_ keepalive: Keepalive) -> UInt64 {
        UInt64(max(min(keepalive.interval, keepalive.timeout) / 4, 0.05) * 1e9)
    }

    private func tick(_ keepalive: Keepalive) {
        let now = Clock.nanoseconds()
        if !receiving && (held.isOver || streamsAtBound > 0) {
            // Not reading because a pod is slow: the peer's silence is ours.
            lastReceived = now
            pingSent = 0
        }
        if pingSent != 0, now - pingSent >= UInt64(keepalive.timeout * 1e9) {
            return close(reason: "no answer to PING within \(keepalive.timeout.formatted1) s")
        }
        if pingSent == 0, now - lastReceived >= UInt64(keepalive.interval * 1e9) {
            pingSent = now
            let ping = FrameWriter.ping()
            ping.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
            flushSoon()
        }
        tickTimer = relay.reactor.timer(nanoseconds: Self.tickNanoseconds(keepalive), handler: self, tag: Tag.tick.rawValue)
    }

    // MARK: reading

    private func receiveNext() {
        if receiving || closed || closingReason != nil { return }
        if held.isOver || streamsAtBound > 0 || output.queuedBytes >= Self.maxQueuedBytes { return }
        receiving = true
        relay.reactor.receive(fd, handler: self, tag: Tag.receive.rawValue)
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
            pingSent = 0
            receivingBuffer = completion.buffer
            receive(UnsafeMutableRawBufferPointer(start: relay.reactor.buffers.pointer(completion.buffer), count: Int(completion.result)))
            receivingBuffer = BufferPool.none
            relay.reactor.buffers.release(completion.buffer)
            if closed { return }
            receiveNext()
            flushSoon()
        case .write, .splice:
            writing = false
            if completion.result < 0 { return close(reason: SystemError.reason(-completion.result)) }
            output.advance(Int(completion.result))
            receiveNext()
            flushSoon()
        case .tick:
            if let keepalive { tick(keepalive) }
        case nil:
            break
        }
    }

    private func receive(_ bytes: UnsafeMutableRawBufferPointer) {
        events.removeAll(keepingCapacity: true)
        channels.receive(bytes, into: &events)
        for event in events {
            switch event {
            case .data(let port, let range):
                deliver(UnsafeRawBufferPointer(rebasing: bytes[range]), to: port, buffer: receivingBuffer)
            case .decoded(let port, let decoded):
                decoded.withUnsafeBytes { deliver($0, to: port, buffer: BufferPool.none) }
            case .control(let frame):
                if let answer = frame.answer {
                    answer.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
                }
                if case .close = frame { closingReason = Connection.closedByPeer }
                if case .failed(let error) = frame { closingReason = "WebSocket: \(error)" }
            }
        }
    }

    private func deliver(_ bytes: UnsafeRawBufferPointer, to port: Int, buffer: BufferID) {
        guard closingReason == nil, port < streams.count else { return }
        let carrier = streams[port]
        // A port whose tunnel ended takes nothing more (no one would count it as written).
        if carrier.tunnel.finished { return }
        let before = carrier.unwritten
        carrier.unwritten += bytes.count
        if before < streamBound && carrier.unwritten >= streamBound { streamsAtBound += 1 }
        var shared = buffer
        if shared != BufferPool.none {
            let start = UnsafeRawPointer(relay.reactor.buffers.pointer(shared))
            if !(bytes.baseAddress! >= start && bytes.baseAddress! + bytes.count <= start + relay.reactor.buffers.bufferSize) {
                shared = BufferPool.none
            }
        }
        carrier.tunnel.received(.bytes(bytes, buffer: shared))
    }

    // MARK: forwarding

    private func forward(_ index: Int) {
        let carrier = ChannelStream(owner: self, port: index)
        // Base64 payloads are encoded from memory: no pipes for them.
        let tunnel = Tunnel(transport: carrier, reactor: relay.reactor, pipes: channels.encoding == .binary ? relay.pipes : nil)
        carrier.tunnel = tunnel
        streams.append(carrier)
        relay.streams += 1
        tunnel.onFinish = { [unowned self] _ in
            if let attempt = self.attempts.removeValue(forKey: index) { attempt.cancel() }
            if carrier.unwritten >= self.streamBound { self.streamsAtBound -= 1 }
            carrier.unwritten = 0
            self.relay.streams -= 1
            self.relay.endedSinceTrim += 1
            self.receiveNext()
        }
        if relay.streams > relay.limits.maxStreams {
            return fail(carrier, Refusal.tooManyStreams(limit: relay.limits.maxStreams).text)
        }
        var answered = false
        let attempt = relay.connector.connect(pod: pod, port: Int(channels.ports[index])) { [unowned self] result in
            answered = true
            self.attempts[index] = nil
            switch result {
            case .connected, .joined:
                result.attach(tunnel)
            case .failed(let refusal):
                self.fail(carrier, refusal.text)
            }
            self.flushSoon()
        }
        if !answered { attempts[index] = attempt }
    }

    /// The port cannot be reached: the reason on its error channel (the Python client raises it
    /// as that port's error); the other ports go on.
    private func fail(_ carrier: ChannelStream, _ text: String) {
        carrier.tunnel.refused()
        let message = channels.errorMessage(port: carrier.port, text)
        message.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
        carrier.ended = true
        flushSoon()
    }

    // MARK: from the streams

    func ready(_ carrier: ChannelStream) {
        if !carrier.listed {
            carrier.listed = true
            ready.append(carrier)
        }
        flushSoon()
    }

    func written(_ carrier: ChannelStream, _ count: Int) {
        let before = carrier.unwritten
        carrier.unwritten -= count
        if before >= streamBound && carrier.unwritten < streamBound {
            streamsAtBound -= 1
            receiveNext()
        }
    }

    /// A port's tunnel gave up: the protocol cannot end one port alone, so the client is told on
    /// its error channel.
    func abandon(_ carrier: ChannelStream) {
        if carrier.ended { return }
        carrier.ended = true
        let message = channels.errorMessage(port: carrier.port, "the connection to port \(channels.ports[carrier.port]) was reset")
        message.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
        flushSoon()
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

    /// Each ready port's bytes become one message on its data channel.
    private func fill() {
        while let carrier = ready.first, output.queuedBytes < Self.outputLimit, closingReason == nil {
            let limit = channels.encoding == .binary ? Self.maxMessagePayload : channels.limits.maxBytesPerMessage
            let (count, endsBody) = carrier.ended ? (0, false) : carrier.tunnel.pendingBytes(limit: limit)
            if count > 0 {
                let payload = carrier.takePayload(count: count)
                if channels.encoding == .binary {
                    let length = FrameWriter.header(.binary, payloadLength: count + 1, into: prefix)
                    prefix[length] = ChannelProtocol.dataChannel(port: carrier.port)
                    output.append(bytes: prefix.baseAddress!, count: length + 1)
                    output.append(payload: payload, count: count, source: carrier)
                } else if case .memory(let pointer) = payload {
                    var message: [UInt8] = []
                    channels.appendData(port: carrier.port, UnsafeRawBufferPointer(start: pointer, count: count), to: &message)
                    message.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
                    // Copied (encoded): the tunnel's buffer is free again.
                    carrier.tunnel.payloadSent(count)
                }
                continue
            }
            if endsBody {
                // No half-close in this protocol: the pod's end is the end of the port's data.
                _ = carrier.tunnel.take(0)
                carrier.ended = true
                if streams.allSatisfy(\.ended) {
                    let goodbye = FrameWriter.close(code: 1000)
                    goodbye.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
                    closingReason = "every port ended"
                }
            }
            carrier.listed = false
            ready.removeFirst()
        }
    }

    // MARK: ending

    func stop() {
        let goodbye = FrameWriter.close(code: 1001)
        goodbye.withUnsafeBytes { output.append(bytes: $0.baseAddress!, count: $0.count) }
        closingReason = "relay stopping"
        flushSoon()
    }

    func close(reason: String?) {
        if closed { return }
        closed = true
        relay.reactor.cancelTimer(tickTimer)
        for attempt in attempts.values { attempt.cancel() }
        attempts.removeAll()
        for carrier in streams { carrier.tunnel.connectionLost() }
        streams.removeAll()
        ready.removeAll()
        relay.reactor.close(fd) { [output] in output.discard() }
        relay.channelSessionClosed(self, reason: reason)
    }
}

/// One port of a channel-protocol connection, as a tunnel's transport.
final class ChannelStream: TunnelBody, StreamTransport {
    weak var owner: ChannelRelaySession?
    /// The port's index in the request's list (its channels are 2i and 2i+1).
    let port: Int
    let held: HeldBytes
    var unwritten = 0
    var listed = false
    /// The port's data ended (its pod closed, or it failed).
    var ended = false

    init(owner: ChannelRelaySession, port: Int) {
        self.owner = owner
        self.port = port
        held = owner.held
        super.init()
    }

    func resume() { owner?.ready(self) }
    func consume(_ count: Int) { owner?.written(self, count) }
    func reset() { owner?.abandon(self) }
}
