import CLinuxShim
import CURing
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Setting up the ring: the flags tried, the features and opcodes required, and the lazy enable
/// that makes the thread that first submits the ring's one issuer.
extension UringReactor {
    /// The ring set-ups tried in turn. DEFER_TASKRUN (6.1) runs completion work only when this
    /// thread waits, so nothing interrupts it; COOP_TASKRUN (5.19) at least spares it the IPIs.
    /// R_DISABLED lets the thread that first submits, not the one that builds the reactor,
    /// become the one issuer.
    @_spi(Testing) public static let setups: [UInt32] = [
        pf_ioring_setup_single_issuer | pf_ioring_setup_defer_taskrun | pf_ioring_setup_r_disabled
            | pf_ioring_setup_submit_all,
        pf_ioring_setup_coop_taskrun | pf_ioring_setup_submit_all,
        0,
    ]

    /// A ring built with the first of `setups` the kernel accepts, and the flags it took.
    static func makeRing(_ setups: [UInt32]) throws -> (UnsafeMutablePointer<io_uring>, UInt32) {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        var result: Int32 = -EINVAL
        var chosen: UInt32 = 0
        var features: UInt32 = 0
        for flags in setups {
            var params = io_uring_params()
            params.flags = flags | pf_ioring_setup_cqsize
            params.cq_entries = Self.completionEntries
            result = io_uring_queue_init_params(Self.submissionEntries, ring, &params)
            if result == 0 {
                chosen = flags
                features = params.features
                break
            }
            // Only an unknown flag is worth another try; ENOSYS, EPERM or ENOMEM are final.
            if result != -EINVAL { break }
        }
        guard result == 0 else {
            ring.deallocate()
            throw SystemError("io_uring_queue_init", errno: -result)
        }
        func fail(_ call: String, _ errno: Int32, _ subject: String = "") -> SystemError {
            io_uring_queue_exit(ring)
            ring.deallocate()
            return SystemError(call, errno: errno, subject: subject)
        }
        if features & pf_ioring_feat_cqe_skip == 0 {
            throw fail("io_uring_queue_init", EOPNOTSUPP, "(no IORING_FEAT_CQE_SKIP)")
        }
        if let missing = Self.missingOpcode(ring) {
            throw fail("io_uring_get_probe", EOPNOTSUPP, "(no opcode \(missing))")
        }
        return (ring, chosen)
    }

    /// Whether the running kernel has the io_uring opcodes `operation` is built on.
    public static func kernelSupports(_ operation: Operation) -> Bool {
        guard let supported = probedOpcodes else { return false }
        return opcodes(for: operation).allSatisfy { Int($0) < supported.count && supported[Int($0)] }
    }

    static let probedOpcodes: [Bool]? = {
        guard let probe = io_uring_get_probe() else { return nil }
        defer { io_uring_free_probe(probe) }
        return (0..<256).map { io_uring_opcode_supported(probe, Int32($0)) != 0 }
    }()

    static func opcodes(for operation: Operation) -> [UInt32] {
        switch operation {
        case .accept: return [IORING_OP_ACCEPT.rawValue]
        case .connect: return [IORING_OP_CONNECT.rawValue]
        case .receive, .read: return [IORING_OP_READ.rawValue]
        case .write: return [IORING_OP_WRITE.rawValue]
        case .writev: return [IORING_OP_WRITEV.rawValue]
        case .splice: return [IORING_OP_SPLICE.rawValue, IORING_OP_POLL_ADD.rawValue]
        case .poll: return [IORING_OP_POLL_ADD.rawValue]
        case .timer: return []
        }
    }

    static func missingOpcode(_ ring: UnsafeMutablePointer<io_uring>) -> UInt32? {
        guard let probe = io_uring_get_probe_ring(ring) else { return IORING_OP_LAST.rawValue }
        defer { io_uring_free_probe(probe) }
        let needed = [Operation.accept, .connect, .read, .write, .writev, .splice, .poll].flatMap(opcodes(for:))
            + [IORING_OP_ASYNC_CANCEL.rawValue]
        return needed.first { io_uring_opcode_supported(probe, Int32($0)) == 0 }
    }

    /// The first submission makes the calling thread the ring's only issuer.
    func enable() -> Bool {
        if enabled { return true }
        if startsDisabled {
            let result = pf_io_uring_enable_rings(ring)
            if result < 0 {
                record(result, "io_uring_enable_rings")
                return false
            }
            // Registered for this thread, which is the only one allowed to enter the ring anyway.
            _ = io_uring_register_ring_fd(ring)
        }
        enabled = true
        unsubmitted = []
        return true
    }
}
