import Reactor
#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// What a connection will write, in order: bytes nghttp2 serialized (frame headers, HEADERS,
/// SETTINGS, WINDOW_UPDATE...) copied into one growing buffer, and DATA payloads left where they
/// are (a stream's buffer, or a pipe). Consecutive memory segments leave in one writev.
public final class OutputQueue {
    enum Segment {
        case bytes(offset: Int, count: Int)
        case memory(DataSource, UnsafeRawPointer, count: Int)
        case pipe(DataSource, FileDescriptor, count: Int)

        var count: Int {
            switch self {
            case .bytes(_, let count), .memory(_, _, let count), .pipe(_, _, let count): return count
            }
        }
    }

    private var segments: [Segment] = []
    private var head = 0
    /// Bytes of segments[head] already written.
    private var headWritten = 0
    private var control: UnsafeMutableRawPointer
    private var controlCapacity: Int
    private var controlUsed = 0
    public private(set) var queuedBytes = 0

    public static let maxVectors = 64
    public let vectors: UnsafeMutablePointer<iovec>

    public init() {
        controlCapacity = 64 * 1024
        control = .allocate(byteCount: controlCapacity, alignment: 16)
        vectors = .allocate(capacity: Self.maxVectors)
        segments.reserveCapacity(256)
    }

    deinit {
        control.deallocate()
        vectors.deallocate()
    }

    public var isEmpty: Bool { queuedBytes == 0 }

    public func append(bytes: UnsafeRawPointer, count: Int) {
        guard count > 0 else { return }
        if controlUsed + count > controlCapacity {
            var capacity = controlCapacity * 2
            while controlUsed + count > capacity { capacity *= 2 }
            let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
            grown.copyMemory(from: control, byteCount: controlUsed)
            control.deallocate()
            control = grown
            controlCapacity = capacity
        }
        (control + controlUsed).copyMemory(from: bytes, byteCount: count)
        // Extend the last segment when it is the bytes just before these.
        if let last = segments.last, segments.count > head, case .bytes(let offset, let length) = last,
           offset + length == controlUsed {
            segments[segments.count - 1] = .bytes(offset: offset, count: length + count)
        } else {
            segments.append(.bytes(offset: controlUsed, count: count))
        }
        controlUsed += count
        queuedBytes += count
    }

    public func append(payload: Payload, count: Int, source: DataSource) {
        guard count > 0 else { return }
        switch payload {
        case .memory(let pointer): segments.append(.memory(source, pointer, count: count))
        case .pipe(let fd): segments.append(.pipe(source, fd, count: count))
        }
        queuedBytes += count
    }

    /// The next write: either vectors for writev (`pipe` nil) or a pipe to splice from.
    public func nextWrite() -> (vectorCount: Int, pipe: FileDescriptor?, pipeCount: Int) {
        var index = head
        var count = 0
        while index < segments.count && count < Self.maxVectors {
            let skip = index == head ? headWritten : 0
            switch segments[index] {
            case .bytes(let offset, let length):
                vectors[count] = iovec(iov_base: control + offset + skip, iov_len: length - skip)
            case .memory(_, let pointer, let length):
                vectors[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: pointer) + skip, iov_len: length - skip)
            case .pipe(_, let fd, let length):
                if count == 0 { return (0, fd, length - skip) }
                return (count, nil, 0)
            }
            count += 1
            index += 1
        }
        return (count, nil, 0)
    }

    /// `written` bytes have left; payload sources are told.
    public func advance(_ written: Int) {
        var left = written
        queuedBytes -= written
        while left > 0 && head < segments.count {
            let segment = segments[head]
            let remaining = segment.count - headWritten
            let step = min(remaining, left)
            switch segment {
            case .bytes: break
            case .memory(let source, _, _), .pipe(let source, _, _): source.payloadSent(count: step)
            }
            left -= step
            if step == remaining {
                head += 1
                headWritten = 0
            } else {
                headWritten += step
            }
        }
        if head == segments.count {
            segments.removeAll(keepingCapacity: true)
            head = 0
            controlUsed = 0
        } else if head > 1024 {
            segments.removeFirst(head)
            head = 0
        }
    }

    /// Drops everything (the connection is gone); sources are told what of theirs was dropped.
    public func discard() {
        for index in head..<segments.count {
            let skip = index == head ? headWritten : 0
            switch segments[index] {
            case .bytes: break
            case .memory(let source, _, let count), .pipe(let source, _, let count):
                source.payloadDropped(count: count - skip)
            }
        }
        segments.removeAll(keepingCapacity: true)
        head = 0
        headWritten = 0
        controlUsed = 0
        queuedBytes = 0
    }
}
