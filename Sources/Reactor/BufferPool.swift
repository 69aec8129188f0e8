#if canImport(Glibc)
@preconcurrency import Glibc
#endif

public typealias BufferID = UInt32

/// Fixed-size byte buffers handed out by index. Memory comes in slabs mapped on demand and
/// never unmapped, so steady-state relaying allocates nothing; a buffer is held only while
/// bytes are in flight. After a burst, `trim` gives the pages of free buffers back to the
/// system while their addresses stay valid. The io_uring backend hands buffers to the kernel
/// through a provided-buffer ring, taking them like any holder.
public final class BufferPool {
    public static let none: BufferID = .max
    public static let defaultBufferSize = 128 * 1024
    public static let buffersPerSlab = 128
    /// How many free buffers `trim` leaves resident unless told otherwise: enough for a few
    /// streams to start moving bytes again without a page fault per 4 KiB.
    public static let defaultWarmBuffers = 16

    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    public let bufferSize: Int
    private var slabs: [UnsafeMutableRawPointer] = []
    private var free: [BufferID] = []
    /// Holders per buffer: a received buffer may be shared by the streams whose DATA it holds.
    private var holders: [UInt32] = []
    /// Per buffer: its pages hold nothing of value to the system (never touched, or trimmed and
    /// not taken since), so `trim` skips it without a system call.
    private var trimmed: [Bool] = []
    public private(set) var inUse = 0

    public init(bufferSize: Int = BufferPool.defaultBufferSize) {
        self.bufferSize = bufferSize
        free.reserveCapacity(4096)
    }

    deinit {
        for slab in slabs { munmap(slab, bufferSize * Self.buffersPerSlab) }
    }

    public var capacity: Int { slabs.count * Self.buffersPerSlab }

    @inline(__always)
    public func pointer(_ id: BufferID) -> UnsafeMutableRawPointer {
        let index = Int(id)
        return slabs[index / Self.buffersPerSlab] + (index % Self.buffersPerSlab) * bufferSize
    }

    public func take() -> BufferID {
        if free.isEmpty { grow() }
        inUse += 1
        let id = free.removeLast()
        holders[Int(id)] = 1
        // A trimmed buffer refaults as zero pages when written; nothing to do but forget the mark.
        trimmed[Int(id)] = false
        return id
    }

    /// One more holder; the buffer goes back when the last one releases it.
    @inline(__always)
    public func retain(_ id: BufferID) {
        holders[Int(id)] += 1
    }

    public func release(_ id: BufferID) {
        precondition(id != Self.none)
        holders[Int(id)] -= 1
        if holders[Int(id)] > 0 { return }
        inUse -= 1
        free.append(id)
    }

    /// Gives the pages of free buffers back to the system (`madvise(MADV_DONTNEED)`), all but
    /// the `keepWarm` lowest-numbered free ones, which are the next `take` hands out: the free
    /// list is put in order so that the same low buffers keep being used and the high ones stay
    /// cold. Returns the bytes given back now; a buffer trimmed before and not taken since
    /// costs neither a system call nor a byte, so calling this often is cheap.
    ///
    /// Only free buffers are trimmed. Those the io_uring backend keeps in its provided-buffer
    /// ring are in use for the life of the reactor (`UringReactor.bufferRingEntries` of them)
    /// and stay resident. With a buffer size that is not a whole number of pages, a page shared
    /// with a neighbour is kept.
    @discardableResult
    public func trim(keepWarm: Int = BufferPool.defaultWarmBuffers) -> Int {
        // Highest first: `take` pops from the end, so the lowest go out first. (Mostly in order
        // already since the trim before, which the sort makes quick.)
        free.sort(by: >)
        let cold = free.count - min(max(keepWarm, 0), free.count)
        var given = 0
        // Consecutive buffers of one slab go back in one call: ids descend through `free`.
        var run: (low: Int, high: Int)?
        for position in 0..<cold {
            let id = Int(free[position])
            if trimmed[id] { continue }
            trimmed[id] = true
            if let current = run, current.low == id + 1, id / Self.buffersPerSlab == current.low / Self.buffersPerSlab {
                run = (id, current.high)
                continue
            }
            if let current = run { given += giveBack(current.low, through: current.high) }
            run = (id, id)
        }
        if let current = run { given += giveBack(current.low, through: current.high) }
        return given
    }

    /// The whole pages of buffers `low` through `high` (of one slab): the bytes given back.
    private func giveBack(_ low: Int, through high: Int) -> Int {
        let page = Self.pageSize
        let start = UInt(bitPattern: pointer(BufferID(low)))
        let end = UInt(bitPattern: pointer(BufferID(high))) + UInt(bufferSize)
        let first = (start + UInt(page) - 1) / UInt(page) * UInt(page)
        let last = end / UInt(page) * UInt(page)
        guard last > first, madvise(UnsafeMutableRawPointer(bitPattern: first), Int(last - first), MADV_DONTNEED) == 0 else {
            return 0
        }
        return Int(last - first)
    }

    private func grow() {
        let bytes = bufferSize * Self.buffersPerSlab
        guard let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            fatalError("out of memory: cannot map \(bytes) bytes of buffers")
        }
        let first = slabs.count * Self.buffersPerSlab
        slabs.append(memory)
        holders.append(contentsOf: repeatElement(0, count: Self.buffersPerSlab))
        // Never touched: nothing to give back yet.
        trimmed.append(contentsOf: repeatElement(true, count: Self.buffersPerSlab))
        // Lowest ids last, so they are taken first and the same few buffers stay warm.
        for index in stride(from: first + Self.buffersPerSlab - 1, through: first, by: -1) {
            free.append(BufferID(index))
        }
    }
}
