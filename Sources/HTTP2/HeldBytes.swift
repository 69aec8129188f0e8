/// What a bound on held bytes needs: a count, a limit, and someone to tell when the count falls
/// back under it. Single-threaded, like everything on a reactor.
public final class HeldBytes {
    public let limit: Int
    public private(set) var count = 0
    /// Called when the count falls back below the limit after having reached it.
    public var onBelowLimit: (() -> Void)?
    private var waiters: [() -> Void] = []
    private var reached = false

    public init(limit: Int) { self.limit = limit }

    @inline(__always) public var isOver: Bool { count >= limit }

    @inline(__always) public func add(_ bytes: Int) {
        count += bytes
        if count >= limit { reached = true }
    }

    @inline(__always) public func remove(_ bytes: Int) {
        count -= bytes
        if reached && count < limit { wake() }
    }

    /// `waiter` runs once, when the count falls below the limit.
    public func wait(_ waiter: @escaping () -> Void) { waiters.append(waiter) }

    private func wake() {
        reached = false
        onBelowLimit?()
        let woken = waiters
        waiters.removeAll()
        for waiter in woken { waiter() }
    }
}
