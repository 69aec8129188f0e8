import HTTP2
import Reactor
import SPDY

/// One kubectl port-forward connection over SPDY/3.1 (`portforward.k8s.io`), plain or in kubectl
/// 1.31+'s WebSocket tunnel: the relay's side of an `SPDYConnection`. Each local connection of
/// kubectl's is an error/data stream pair (`PortForwardPairs`); a complete pair becomes a `Tunnel`
/// to the pod's port, its data stream an `SPDYStream`, once the stream-open buckets allow.
final class SPDYRelaySession: SPDYConnection, OpenQueue {
    let pod: Pod
    unowned let relay: Relay
    private var pairs = PortForwardPairs()
    private var attempts: [UInt32: ConnectAttempt] = [:]
    /// Complete pairs waiting for their turn to connect (`OpenScheduler`: the same per-connection
    /// and per-peer stream-open buckets as h2 streams), oldest first.
    private var waitingOpens: WaitingOpens<SPDYStream>
    var inOpenScheduler = false
    private var pairTimer: TimerID = 0
    private var pairTimerDeadline: UInt64 = 0
    /// The most payload of one DATA frame to a client: a pipe's worth, as an h2 frame's
    /// (`SessionSettings.maxFrameSize`). spdystream (kubectl) reads any length SPDY allows, and
    /// in the WebSocket tunnel each frame is one message, which client-go reads as a stream.
    static let maxFramePayload = 1 << 20

    init(fd: FileDescriptor, peer: String, pod: Pod, relay: Relay, overWebSocket: Bool = false) throws {
        self.pod = pod
        self.relay = relay
        waitingOpens = WaitingOpens(rate: relay.limits.streamOpenRate)
        try super.init(fd: fd, peer: peer, reactor: relay.reactor, pipes: relay.pipes, role: .server,
                       overWebSocket: overWebSocket, maxHeldBytes: relay.limits.maxHeldBytesPerConnection,
                       streamBound: Int(relay.settings.streamWindow), keepalive: relay.limits.keepalive,
                       idleTimeout: relay.limits.idleTimeout, maxFramePayload: Self.maxFramePayload)
    }

    // MARK: session events

    override func streamEvent(_ event: SPDYEvent) {
        guard case .synStream(let stream, _, _, let headers, _) = event else { return }
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
    }

    override func streamReset(_ stream: UInt32) {
        pairs.streamGone(stream)
        if let carrier = streams[stream], !carrier.closed, let attempt = attempts.removeValue(forKey: stream) {
            attempt.cancel()
        }
    }

    override var isBusy: Bool { !streams.isEmpty || pairs.count > 0 }

    private func reply(_ stream: UInt32) {
        do {
            try session.synReply(stream: stream)
        } catch {
            relay.limitedLog("\(peer): SPDY stream \(stream): cannot reply: \(error)")
            session.reset(stream: stream, status: .internalError)
        }
    }

    // MARK: forwarding

    private func forward(_ pair: PortForwardPairs.Pair) {
        let carrier = SPDYStream(owner: self, pair: pair)
        let tunnel = add(carrier, pipes: pipes)
        let stream = pair.dataStream
        relay.streams += 1
        tunnel.onFinish = { [unowned self] _ in
            if let attempt = self.attempts.removeValue(forKey: stream) { attempt.cancel() }
            self.relay.streams -= 1
            self.relay.endedSinceTrim += 1
            self.pairs.forwardEnded(pair)
            self.finished(carrier)
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

    // MARK: pairing timeout

    private func armPairTimer() {
        guard let deadline = pairs.nextDeadline else { return }
        if pairTimerDeadline != 0 && pairTimerDeadline <= deadline { return }
        if pairTimerDeadline != 0 { relay.reactor.cancelTimer(pairTimer) }
        let now = Clock.nanoseconds()
        pairTimerDeadline = deadline
        pairTimer = relay.reactor.timer(nanoseconds: deadline > now ? deadline - now : 0, handler: self, tag: Tag.pairTimer.rawValue)
    }

    override func pairTimerFired() {
        pairTimerDeadline = 0
        for expiry in pairs.expire(now: Clock.nanoseconds()) {
            if let errorStream = expiry.errorStream, session.isWritable(errorStream) {
                try? session.sendData(stream: errorStream, Array(expiry.message.utf8), fin: true)
            }
            if let dataStream = expiry.dataStream { session.reset(stream: dataStream, status: .cancel) }
        }
        armPairTimer()
        flushSoon()
    }

    // MARK: ending

    /// The relay stops: say GOAWAY and close once it is written.
    func stop() {
        session.goAway()
        closingReason = "relay stopping"
        flushSoon()
    }

    override func willClose() {
        relay.reactor.cancelTimer(pairTimer)
        for attempt in attempts.values { attempt.cancel() }
        attempts.removeAll()
    }

    override func didClose(reason: String?) {
        waitingOpens.removeAll()
        relay.spdySessionClosed(self, reason: reason)
    }
}
