import CLinuxShim
import CNGHTTP2
import HTTP2
import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Stream opens wait here, per session, and are started at the end of a turn in rounds: each
/// session with waiting opens gets a few per round, within the token buckets of its connection
/// and of its peer address, and a turn starts no more than `perTurn` (the rest go on next turn,
/// after the reactor has polled). So a client that floods opens (or opens and resets, the rapid
/// reset attack) waits behind its own opens, and a stream reset while it waits costs nothing.
final class OpenScheduler: CompletionHandler, DeferredTask {
    let reactor: ReactorBackend
    private var waiting: [OpenQueue] = []
    /// A run is due at the end of this turn.
    private var deferred = false
    /// A run is due by timer (next turn, or when a token is): its deadline, 0 when none.
    private var timer: TimerID = 0
    private var timerDeadline: UInt64 = 0
    static let perRound = 16
    static let perTurn = 256

    init(reactor: ReactorBackend) { self.reactor = reactor }

    /// `session` has a new open waiting.
    func enqueue(_ session: OpenQueue) {
        if !session.inOpenScheduler {
            session.inOpenScheduler = true
            waiting.append(session)
        }
        if !deferred {
            deferred = true
            reactor.schedule(self)
        }
    }

    func runDeferred() {
        deferred = false
        run()
    }

    func complete(_ completion: Completion) {
        timerDeadline = 0
        run()
    }

    /// A run after `nanoseconds`, unless one is due sooner.
    private func arm(after nanoseconds: UInt64) {
        let deadline = Clock.nanoseconds() + nanoseconds
        if timerDeadline != 0 {
            if timerDeadline <= deadline { return }
            reactor.cancelTimer(timer)
        }
        timerDeadline = deadline
        timer = reactor.timer(nanoseconds: nanoseconds, handler: self, tag: 0)
    }

    private func run() {
        var started = 0
        var shortestWait = UInt64.max
        while started < Self.perTurn && !waiting.isEmpty {
            var progressed = false
            var index = 0
            while index < waiting.count && started < Self.perTurn {
                let session = waiting[index]
                let (count, wait) = session.startWaitingOpens(limit: min(Self.perRound, Self.perTurn - started))
                started += count
                if count > 0 { progressed = true }
                if !session.hasWaitingOpens {
                    session.inOpenScheduler = false
                    waiting.remove(at: index)
                    continue
                }
                if wait > 0 { shortestWait = min(shortestWait, wait) }
                index += 1
            }
            if !progressed { break }
        }
        if waiting.isEmpty { return }
        // More than a turn's worth: go on after the reactor has polled; else when a token is due.
        arm(after: started >= Self.perTurn ? 0 : min(shortestWait, 1_000_000_000))
    }
}

/// A connection whose stream opens wait for their turn in the `OpenScheduler`: an h2 session
/// (`RelaySession`) or kubectl's SPDY session (`SPDYRelaySession`).
protocol OpenQueue: AnyObject {
    /// In the scheduler's list.
    var inOpenScheduler: Bool { get set }
    var hasWaitingOpens: Bool { get }
    /// Starts up to `limit` waiting opens within the token buckets; returns how many started
    /// and, when a bucket stopped it, how long until a token.
    func startWaitingOpens(limit: Int) -> (started: Int, wait: UInt64)
}

/// A connection's stream opens waiting for their turn, oldest first, and its stream-open bucket:
/// what every `OpenQueue` keeps. `next` hands out the opens the buckets allow, one at a time, so
/// that the caller starts each outside this value (a connect may answer at once).
struct WaitingOpens<Open> {
    enum Next {
        case start(Open)
        /// A bucket is empty: a token comes in this many nanoseconds.
        case wait(UInt64)
        case empty
    }

    private var opens: [Open] = []
    private var head = 0
    private var bucket: TokenBucket

    init(rate: TokenBucket.Setting) { bucket = TokenBucket(rate) }

    var isEmpty: Bool { head == opens.count }

    mutating func append(_ open: Open) { opens.append(open) }

    mutating func removeAll() {
        opens.removeAll()
        head = 0
    }

    /// The next open to start now, within this connection's bucket and `peerWait` (the peer
    /// address's bucket, whose token the caller takes); opens `isGone` says ended while they
    /// waited are dropped on the way.
    mutating func next(now: UInt64, peerWait: UInt64, isGone: (Open) -> Bool) -> Next {
        while head < opens.count, isGone(opens[head]) { head += 1 }
        guard head < opens.count else {
            compact()
            return .empty
        }
        let wait = max(bucket.wait(now: now), peerWait)
        if wait > 0 {
            compact()
            return .wait(wait)
        }
        bucket.take(now: now)
        let open = opens[head]
        head += 1
        compact()
        return .start(open)
    }

    private mutating func compact() {
        if head == opens.count {
            opens.removeAll(keepingCapacity: opens.count <= 1024)
            head = 0
        } else if head > 1024 {
            opens.removeFirst(head)
            head = 0
        }
    }
}
