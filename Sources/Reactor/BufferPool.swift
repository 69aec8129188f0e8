#if canImport(Glibc)
@preconcurrency import Glibc
#endif

public typealias BufferID = UInt32

/// Fixed-size byte buffers handed out by index. Memory comes in slabs mapped on demand and is
/// never returned to the system, so steady-state relaying allocates nothing; a buffer is held
/// only while bytes are in flight. The io_uring backend hands buffers to the kernel through a
/// provided-buffer ring, taking them like any holder.
public final class BufferPool {
    public static let none: BufferID = .max
    public static let defaultBufferSize = 128 * 1024
    public static let buffersPerSlab = 128

    public let bufferSize: Int
    private var slabs: [UnsafeMutableRawPointer] = []
    private var free: [BufferID] = []
    /// Holders per buffer: a received buffer may be shared by the streams whose DATA it holds.
    private var holders: [UInt32] = []
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

    private func grow() {
        let bytes = bufferSize * Self.buffersPerSlab
        guard let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            fatalError("out of memory: cannot map \(bytes) bytes of buffers")
        }
        let first = slabs.count * Self.buffersPerSlab
        slabs.append(memory)
        holders.append(contentsOf: repeatElement(0, count: Self.buffersPerSlab))
        // Lowest ids last, so they are taken first and the same few buffers stay warm.
        for index in stride(from: first + Self.buffersPerSlab - 1, through: first, by: -1) {
            free.append(BufferID(index))
        }
    }
}
