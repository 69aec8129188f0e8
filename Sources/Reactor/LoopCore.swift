#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What both backends share: completions ready to deliver (and the backend's own callbacks),
/// tasks deferred to the end of the turn, and timers. The turn itself is spelled out in `run` of each backend.
final class LoopCore {
    struct Ready {
        var handler: CompletionHandler
        var completion: Completion
        /// A timer's id: a timer cancelled after it fell due but before delivery is not delivered.
        var timer: TimerID = 0
    }

    private(set) var ready: [Ready] = []
    private var delivering: [Ready] = []
    /// Callbacks posted by the backend (`close(fd, quiet:)`), run after the completions.
    private var callbacks: [() -> Void] = []
    private var calling: [() -> Void] = []
    private var deferred: [DeferredTask] = []
    private var running: [DeferredTask] = []
    var timers = TimerHeap()
    var stopped = false

    /// An accept stopped by a lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
    /// waits this long before it tries again. Trying at once would spin on the same error;
    /// waiting for a new connection would leave the ones already in the backlog hanging.
    static let acceptRestNanoseconds: UInt64 = 10_000_000

    /// Whether an accept that failed with `code` just takes the next connection: the one that
    /// failed went away before it was taken, or brought a network error with it, which accept(2)
    /// says to treat like EAGAIN (ECONNABORTED, and for TCP ENETDOWN, EPROTO, ENOPROTOOPT,
    /// EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH). Nothing is reported.
    static func acceptSkips(after code: Int32) -> Bool {
        switch code {
        case ECONNABORTED, EINTR, ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH:
            return true
        default:
            return false
        }
    }

    /// Whether an accept that failed with `code` rests and tries again rather than ending.
    static func acceptRests(after code: Int32) -> Bool {
        code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM
    }

    init() {
        ready.reserveCapacity(1024)
        delivering.reserveCapacity(1024)
        callbacks.reserveCapacity(64)
        calling.reserveCapacity(64)
        deferred.reserveCapacity(256)
        running.reserveCapacity(256)
    }

    var hasWork: Bool { !ready.isEmpty || !callbacks.isEmpty || !deferred.isEmpty }

    @inline(__always)
    func post(_ handler: CompletionHandler, _ completion: Completion) {
        ready.append(Ready(handler: handler, completion: completion))
    }

    func post(_ callback: @escaping () -> Void) { callbacks.append(callback) }

    func addDeferred(_ task: DeferredTask) { deferred.append(task) }

    /// Delivers the ready completions, one generation at a time, each followed by the deferred
    /// tasks, for at most `maxRounds` generations; what the last one produced waits for the next
    /// turn (the loop then polls without blocking). Bounded, because a handler that issues its next
    /// operation may see it complete at once (epoll tries it inline; io_uring splices inline): a
    /// socket that never runs dry, a flooding client's, would otherwise keep the loop here and no
    /// other descriptor would be polled.
    func drain() {
        var rounds = 0
        while hasWork && rounds < Self.maxRounds {
            rounds += 1
            if !ready.isEmpty {
                swap(&ready, &delivering)
                for item in delivering {
                    if item.timer != 0 && !timers.deliver(item.timer) { continue }
                    item.handler.complete(item.completion)
                }
                delivering.removeAll(keepingCapacity: true)
            }
            if !callbacks.isEmpty {
                swap(&callbacks, &calling)
                for callback in calling { callback() }
                calling.removeAll(keepingCapacity: true)
            }
            if !deferred.isEmpty {
                swap(&deferred, &running)
                for task in running { task.runDeferred() }
                running.removeAll(keepingCapacity: true)
            }
        }
    }

    /// Generations of completions delivered per turn before the loop polls again.
    static let maxRounds = 16

    /// Milliseconds until the next timer (-1: none), 0 when work is waiting.
    func timeoutMilliseconds() -> Int32 {
        if hasWork { return 0 }
        guard let next = timers.nextDeadline else { return -1 }
        let now = Clock.nanoseconds()
        if next <= now { return 0 }
        return Int32(min((next - now + 999_999) / 1_000_000, 60_000))
    }

    func fireTimers() {
        let now = Clock.nanoseconds()
        while let entry = timers.popDue(now: now) {
            ready.append(Ready(handler: entry.handler, completion: Completion(operation: .timer, tag: entry.tag, result: 0),
                               timer: entry.id))
        }
    }
}

/// The timer handler that wakes a resting accept; the tag says which one, in the backend's terms.
final class AcceptRest: CompletionHandler {
    private let wake: (UInt32) -> Void
    init(_ wake: @escaping (UInt32) -> Void) { self.wake = wake }
    func complete(_ completion: Completion) { wake(completion.tag) }
}

public enum Clock {
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// A binary min-heap of deadlines; a cancelled timer is dropped when it reaches the top.
struct TimerHeap {
    struct Entry {
        var deadline: UInt64
        var id: TimerID
        var handler: CompletionHandler
        var tag: UInt32
    }

    private var heap: [Entry] = []
    private var cancelled = Set<TimerID>()
    private var active = Set<TimerID>()
    /// Fell due and posted, not yet delivered; and of those, cancelled in the meantime.
    private var due = Set<TimerID>()
    private var revoked = Set<TimerID>()
    private var nextID: TimerID = 1

    var nextDeadline: UInt64? {
        mutating get {
            dropCancelled()
            return heap.first?.deadline
        }
    }

    mutating func add(after nanoseconds: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID {
        add(at: Clock.nanoseconds() + nanoseconds, handler: handler, tag: tag)
    }

    /// At a deadline on `Clock`: what `add(after:)` does, and what tests use to control time.
    mutating func add(at deadline: UInt64, handler: CompletionHandler, tag: UInt32) -> TimerID {
        let id = nextID
        nextID += 1
        active.insert(id)
        heap.append(Entry(deadline: deadline, id: id, handler: handler, tag: tag))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[parent].deadline <= heap[child].deadline { break }
            heap.swapAt(parent, child)
            child = parent
        }
        return id
    }

    mutating func cancel(_ id: TimerID) {
        if active.remove(id) != nil {
            cancelled.insert(id)
        } else if due.remove(id) != nil {
            revoked.insert(id)
        }
    }

    mutating func popDue(now: UInt64) -> Entry? {
        dropCancelled()
        guard let top = heap.first, top.deadline <= now else { return nil }
        active.remove(top.id)
        due.insert(top.id)
        return removeTop()
    }

    /// Whether a timer that fell due is still to be delivered (false: cancelled since).
    mutating func deliver(_ id: TimerID) -> Bool {
        due.remove(id)
        return revoked.remove(id) == nil
    }

    private mutating func dropCancelled() {
        while let top = heap.first, cancelled.remove(top.id) != nil { _ = removeTop() }
    }

    private mutating func removeTop() -> Entry {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count && heap[left].deadline < heap[smallest].deadline { smallest = left }
                if right < heap.count && heap[right].deadline < heap[smallest].deadline { smallest = right }
                if smallest == parent { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return top
    }
}
