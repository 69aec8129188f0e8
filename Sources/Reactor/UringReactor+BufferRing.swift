import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The provided-buffer ring `receive` reads into: pool buffers offered to the kernel by buffer id,
/// each replaced by a fresh one when a completion hands it to a handler.
extension UringReactor {
    /// Maps the ring's memory and registers it as buffer group `bufferGroup`; the memory and its
    /// size, for `munmap` at the end.
    static func registerBufferRing(_ ring: UnsafeMutablePointer<io_uring>) throws -> (UnsafeMutableRawPointer, Int) {
        let entries = Self.bufferRingEntries
        let bytes = max(entries * MemoryLayout<io_uring_buf>.stride, Int(getpagesize()))
        guard let memory = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            throw SystemError("mmap", errno: pf_errno())
        }
        var registration = io_uring_buf_reg()
        registration.ring_addr = UInt64(UInt(bitPattern: memory))
        registration.ring_entries = UInt32(entries)
        registration.bgid = Self.bufferGroup
        let registered = io_uring_register_buf_ring(ring, &registration, 0)
        if registered != 0 {
            munmap(memory, bytes)
            throw SystemError("io_uring_register_buf_ring", errno: -registered)
        }
        return (memory, bytes)
    }

    /// Puts buffer id `bid` (with the pool buffer now behind it) back in the ring; the kernel
    /// sees it after `publishBuffers`.
    @inline(__always)
    func offer(_ bid: Int) {
        io_uring_buf_ring_add(bufferRing, buffers.pointer(ringBuffers[bid]), UInt32(buffers.bufferSize), UInt16(bid),
                              io_uring_buf_ring_mask(UInt32(Self.bufferRingEntries)), buffersToPublish)
        buffersToPublish += 1
    }

    func recycle(_ flags: UInt32) { offer(Int(flags >> pf_ioring_cqe_buffer_shift)) }

    func publishBuffers() {
        if buffersToPublish == 0 { return }
        io_uring_buf_ring_advance(bufferRing, buffersToPublish)
        buffersToPublish = 0
    }
}
