import Reactor

/// `fanout`: opens K streams to the pod's echo port (W opening at a time), each verified by a
/// small echo, and holds them all; after the hold every stream echoes once more ("held"); then
/// all are ended cleanly; then T seconds of churn: open, echo, close, W cycles in flight.
final class FanoutScenario: RelayScenario {
    private enum Phase: String { case open, hold, verify, close, churn, drain, done }
    private var phase = Phase.open
    private let total: Int
    private let window: Int
    private let size: Int

    private var streams: [BenchStream] = []
    private var opened = 0
    private var verified = 0
    private var failed = 0
    private var ttfb = Latencies()
    private var openStart = 0.0, openEnd = 0.0
    private var relayBefore: Int?
    private var relayHolding: Int?

    private var rechecked = 0
    private var recheckTarget = 0
    private var held = 0
    private var closedCount = 0
    private var closedCleanly = 0

    private var churnStart = 0.0, churnEnd = 0.0
    private var churnNext = 0
    private var churnInFlight = 0
    private var churnDone = 0
    private var churnFailed = 0
    private var churnLatency = Latencies()
    private var lastCount = 0, lastTime = 0.0
    private var phaseTimer: TimerID = 0

    init(reactor: ReactorBackend, route: StreamRoute, options: BenchOptions) {
        total = options.streamCount
        window = max(1, options.concurrency ?? 100)
        size = max(1, options.messageSize)
        let title = "fanout: \(total.grouped) streams \(route.carriers(options)), "
            + "\(min(window, total)) opening at a time, \(size)-byte echoes; then \(options.duration.fixed(1)) s of churn"
        super.init(reactor: reactor, route: route, options: options, title: title)
    }

    // MARK: open

    override func begin() {
        relayBefore = relayResidentKiB()
        streams.reserveCapacity(total)
        openStart = now()
        lastTime = openStart
        armPhaseTimeout()
        for _ in 0..<min(window, total) { openNext() }
    }

    private func armPhaseTimeout() {
        reactor.cancelTimer(phaseTimer)
        let current = phase
        phaseTimer = reactor.after(options.phaseTimeout) { [weak self] in
            guard let self, self.phase == current, !self.finished else { return }
            self.fail("the \(current.rawValue) phase did not finish within \(self.options.phaseTimeout.fixed(0)) s "
                + "(\(self.phaseCounts()))")
        }
    }

    private func phaseCounts() -> String {
        switch phase {
        case .open: return "\(verified) verified, \(failed) failed, \(opened - verified - failed) waiting"
        case .verify: return "\(held) of \(verified) echoed again"
        case .close: return "\(closedCount) of \(held) closed"
        default: return "\(churnInFlight) in flight"
        }
    }

    private func openNext() {
        guard opened < total, !finished else { return }
        let slot = opened
        opened += 1
        let stream = BenchStream(slot: slot, body: .messages, connection: connection(for: slot), events: self, counters: counters)
        streams.append(stream)
        open(stream, port: ports.echo)
        stream.send(count: size)
    }

    private func openSettled() {
        if verified + failed < total {
            openNext()
            return
        }
        openEnd = now()
        relayHolding = relayResidentKiB()
        phase = .hold
        reactor.after(options.hold) { [weak self] in self?.startVerify() }
    }

    // MARK: hold and verify again

    private func startVerify() {
        guard !finished else { return }
        phase = .verify
        armPhaseTimeout()
        var waiting = 0
        for stream in streams where stream.scratch == 1 && !stream.isClosed {
            stream.scratch = 2
            stream.send(count: size)
            waiting += 1
        }
        recheckTarget = waiting
        if waiting == 0 { verifyDone() }
    }

    private func verifyDone() {
        phase = .close
        armPhaseTimeout()
        closeTarget = 0
        for stream in streams where !stream.isClosed {
            if stream.scratch == 3 {
                stream.finishBody()
                closeTarget += 1
            } else {
                stream.reset()
            }
        }
        if closeTarget == 0 { closeDone() }
    }

    private func closeDone() {
        phase = .churn
        streams.removeAll()
        churnStart = now()
        lastCount = 0
        lastTime = churnStart
        reactor.cancelTimer(phaseTimer)
        // Nothing opened: churning would only repeat the same refusal.
        if options.duration <= 0 || verified == 0 { return report() }
        reactor.after(options.duration) { [weak self] in self?.churnTimeUp() }
        for _ in 0..<window { churnOpen() }
    }

    // MARK: churn

    private func churnOpen() {
        guard phase == .churn, !finished else { return }
        let slot = total + churnNext
        churnNext += 1
        churnInFlight += 1
        let stream = BenchStream(slot: slot, body: .messages, connection: connection(for: slot), events: self, counters: counters)
        stream.scratch = 10
        open(stream, port: ports.echo)
        stream.send(count: size, end: true)
    }

    private func churnTimeUp() {
        guard !finished, phase == .churn else { return }
        churnEnd = now()
        phase = .drain
        if churnInFlight == 0 { return report() }
        phaseTimer = reactor.after(5) { [weak self] in self?.report() }
    }

    // MARK: events

    override func refused(_ stream: BenchStream, reason: String) {
        // Churn streams end by themselves (their request body is already ended): `closed` counts them.
        guard stream.scratch == 0 else { return }
        noteError(reason)
        stream.scratch = -1
        failed += 1
        stream.reset()
        if phase == .open { openSettled() }
    }

    override func received(_ stream: BenchStream, _ bytes: UnsafeRawBufferPointer) {
        super.received(stream, bytes)
        guard stream.status == 200 else { return }
        if stream.scratch == 0 && stream.expected == size && bytes.count > 0 {
            ttfb.record(Clock.nanoseconds() - stream.openedAt)
        }
        stream.check(bytes)
        guard stream.expected == 0 else { return }
        switch stream.scratch {
        case 0:
            if stream.mismatched {
                noteError("echo did not match what was sent")
                stream.scratch = -1
                failed += 1
                stream.reset()
            } else {
                stream.scratch = 1
                verified += 1
            }
            if phase == .open { openSettled() }
        case 2:
            if stream.mismatched {
                noteError("second echo did not match what was sent")
                stream.scratch = -1
            } else {
                stream.scratch = 3
                held += 1
            }
            rechecked += 1
            if rechecked == recheckTarget { verifyDone() }
        default:
            break
        }
    }

    override func closed(_ stream: BenchStream, errorCode: UInt32) {
        if finished { return }
        switch stream.scratch {
        case 0:
            // Closed before its first echo came back.
            noteError(describeClose(stream, errorCode: errorCode))
            stream.scratch = -1
            failed += 1
            if phase == .open { openSettled() }
        case 1, 2, 3:
            if stream.scratch != 3 || phase != .close {
                noteError("held stream lost: " + describeClose(stream, errorCode: errorCode))
                if stream.scratch == 2 {
                    rechecked += 1
                    stream.scratch = -1
                    if rechecked == recheckTarget && phase == .verify { verifyDone() }
                }
                stream.scratch = -1
                return
            }
            closedCount += 1
            if errorCode == 0 { closedCleanly += 1 } else { noteError("close: " + describeClose(stream, errorCode: errorCode)) }
            if phase == .close && closedCount == closeTarget { closeDone() }
        case 10:
            churnInFlight -= 1
            if errorCode == 0 && stream.expected == 0 && !stream.mismatched && stream.status == 200 {
                if phase == .churn {
                    churnDone += 1
                    churnLatency.record(Clock.nanoseconds() - stream.openedAt)
                }
            } else {
                churnFailed += 1
                let reason: String
                if stream.status != 200 && stream.status != 0 {
                    reason = refusal(stream)
                } else if stream.mismatched {
                    reason = "echo did not match"
                } else if errorCode == 0 && stream.expected > 0 {
                    reason = "stream ended before the whole echo"
                } else {
                    reason = describeClose(stream, errorCode: errorCode)
                }
                noteError("churn: " + reason)
            }
            if phase == .churn && stream.status == 0 && errorCode == 7 {
                // REFUSED_STREAM before any answer: the relay said GOAWAY. nghttp2 refuses every
                // stream opened from here inside its send loop, and opening the next one from
                // this callback would spin there forever: the churn ends.
                churnTimeUp()
            } else if phase == .churn {
                churnOpen()
            } else if phase == .drain && churnInFlight == 0 {
                report()
            }
        default:
            break
        }
    }

    /// Streams the close phase waits for: the held ones.
    private var closeTarget = 0

    // MARK: report

    private func report() {
        guard !finished, phase != .done else { return }
        phase = .done
        let openSeconds = openEnd - openStart
        let openRate = openSeconds > 0 ? Double(verified) / openSeconds : 0
        result.row("streams opened", "\(verified.grouped) / \(total.grouped)", "verified by echo")
        result.row("streams held", "\(held.grouped) / \(total.grouped)", "echoed again after \(options.hold.fixed(1)) s")
        result.row("closed cleanly", "\(closedCleanly.grouped) / \(held.grouped)")
        result.row("open rate", openRate.significant, "streams/s")
        ttfb.report("ttfb", label: "time to first byte", into: &result)
        result.figure("streams", total)
        result.figure("streams_verified", verified)
        result.figure("streams_failed", failed)
        result.figure("streams_held", held)
        result.figure("streams_closed_cleanly", closedCleanly)
        result.figure("open_seconds", openSeconds)
        result.figure("open_rate_per_s", openRate)
        result.figure("open_concurrency", window)
        if let before = relayBefore, let holding = relayHolding {
            let perStream = held > 0 ? Double(holding - before) * 1024 / Double(max(verified, 1)) : 0
            result.row("relay memory", "\(before.grouped) -> \(holding.grouped)", "KiB RSS (\(perStream.significant) bytes per held stream)")
            result.figure("relay_rss_before_kib", before)
            result.figure("relay_rss_holding_kib", holding)
            result.figure("relay_rss_per_stream_bytes", perStream)
        }
        if churnEnd > churnStart {
            let seconds = churnEnd - churnStart
            let rate = Double(churnDone) / seconds
            result.row("churn rate", rate.significant, "streams/s (open, echo, close; \(window) in flight)")
            churnLatency.report("churn", label: "churn cycle", into: &result)
            result.figure("churn_cycles", churnDone)
            result.figure("churn_failed", churnFailed)
            result.figure("churn_seconds", seconds)
            result.figure("churn_rate_per_s", rate)
        }
        if verified < total || held < verified {
            result.problems.append("\(total - held) of \(total) streams were not held")
        }
        finish()
    }

    override func progressText() -> String {
        let time = now()
        switch phase {
        case .open:
            let rate = Double(verified - lastCount) / max(time - lastTime, 1e-3)
            lastCount = verified
            lastTime = time
            return "open: \(verified.grouped)/\(total.grouped) verified, \(failed) failed, \(rate.significant) streams/s"
        case .hold:
            return "holding \(verified.grouped) streams"
        case .verify:
            return "second echo: \(held.grouped)/\(verified.grouped)"
        case .close:
            return "closing: \(closedCount.grouped)/\(held.grouped)"
        case .churn, .drain, .done:
            let rate = Double(churnDone - lastCount) / max(time - lastTime, 1e-3)
            lastCount = churnDone
            lastTime = time
            return "churn: \(churnDone.grouped) cycles, \(rate.significant) streams/s"
        }
    }
}
