/// Cuts a connection's incoming bytes into frames, whatever the split: a frame head may arrive one
/// byte at a time, and a DATA frame's payload is handed over in pieces as it arrives, never
/// gathered, so a large payload costs no buffer here (and a connection may splice it instead:
/// `dataRemaining`, `skipData`). Control frames are gathered whole, up to `maxControlLength`.
///
/// Pull style: `next` returns one event at a time and the bytes it points at stay valid until the
/// next call. A class only because it owns the buffer control frames are gathered in.
public final class FrameReader {
    public enum Event {
        /// A whole control frame of a type this side decodes; `payload` excludes the 8-byte head.
        case control(type: ControlType, flags: UInt8, payload: UnsafeRawBufferPointer)
        /// A DATA frame's head: its payload follows as `data` pieces, then `dataEnd`.
        case dataHead(DataFrameHeader)
        case data(stream: UInt32, bytes: UnsafeRawBufferPointer)
        /// The DATA frame is complete (also right after `dataHead` for an empty one).
        case dataEnd(DataFrameHeader)
    }

    private enum State {
        case head
        case control(type: ControlType, flags: UInt8, length: Int)
        case data(DataFrameHeader, remaining: Int)
        case dataEnding(DataFrameHeader)
        /// A control frame of a type SPDY/3 says to ignore (unknown, NOOP, CREDENTIAL).
        case skip(remaining: Int)
    }

    public let maxControlLength: Int
    private var state = State.head
    private var headValue: UInt64 = 0
    private var headFill = 0
    /// Where a control frame that arrived in pieces is gathered: grown on demand up to
    /// `maxControlLength`, kept for the next one.
    private var gathered: UnsafeMutableRawPointer?
    private var gatheredCapacity = 0
    private var gatheredCount = 0

    public init(maxControlLength: Int = SPDYLimits.defaultMaxControlFrameLength) {
        self.maxControlLength = maxControlLength
    }

    deinit { gathered?.deallocate() }

    /// Bytes still missing from the frame head being read; 0 inside a frame.
    public var headMissing: Int {
        if case .head = state { return frameHeadLength - headFill }
        return 0
    }

    /// Payload bytes of the current DATA frame not yet seen; 0 outside one.
    public var dataRemaining: Int {
        if case .data(_, let remaining) = state { return remaining }
        return 0
    }

    /// The DATA frame whose payload is being read.
    public var currentData: DataFrameHeader? {
        if case .data(let header, _) = state { return header }
        return nil
    }

    /// `count` payload bytes of the current DATA frame were taken without passing through `next`
    /// (spliced); the next call to `next` reports `dataEnd` if that was the last of them.
    public func skipData(_ count: Int) {
        guard case .data(let header, let remaining) = state, count <= remaining else {
            preconditionFailure("skipData(\(count)) outside a DATA payload or past its end")
        }
        state = remaining == count ? .dataEnding(header) : .data(header, remaining: remaining - count)
    }

    /// The next event from `bytes[index...]`, advancing `index`; nil when they are used up.
    public func next(_ bytes: UnsafeRawBufferPointer, from index: inout Int) throws -> Event? {
        while true {
            switch state {
            case .head:
                while headFill < frameHeadLength, index < bytes.count {
                    headValue = headValue << 8 | UInt64(bytes[index])
                    headFill += 1
                    index += 1
                }
                guard headFill == frameHeadLength else { return nil }
                let head = FrameHead(headValue)
                headFill = 0
                headValue = 0
                switch head {
                case .data(let header):
                    state = header.length == 0 ? .dataEnding(header) : .data(header, remaining: header.length)
                    return .dataHead(header)
                case .control(let version, let type, let flags, let length):
                    guard version == spdyVersion else { throw SPDYError.unsupportedVersion(version) }
                    guard let known = ControlType(rawValue: type) else {
                        // SPDY/3 2.2.1: an unknown control frame type is ignored.
                        if length > 0 { state = .skip(remaining: length) }
                        continue
                    }
                    guard length <= maxControlLength else {
                        throw SPDYError.frameTooLarge(type: type, length: length, limit: maxControlLength)
                    }
                    state = .control(type: known, flags: flags, length: length)
                    gatheredCount = 0
                }

            case .control(let type, let flags, let length):
                // The usual case: the whole payload is in this read, and is decoded where it lies.
                if gatheredCount == 0, bytes.count - index >= length {
                    let payload = UnsafeRawBufferPointer(rebasing: bytes[index ..< index + length])
                    index += length
                    state = .head
                    return .control(type: type, flags: flags, payload: payload)
                }
                guard index < bytes.count else { return nil }
                reserveGathered(length)
                let step = min(length - gatheredCount, bytes.count - index)
                (gathered! + gatheredCount).copyMemory(from: bytes.baseAddress! + index, byteCount: step)
                gatheredCount += step
                index += step
                guard gatheredCount == length else { return nil }
                state = .head
                return .control(type: type, flags: flags,
                                payload: UnsafeRawBufferPointer(start: gathered, count: length))

            case .data(let header, let remaining):
                guard index < bytes.count else { return nil }
                let step = min(remaining, bytes.count - index)
                let piece = UnsafeRawBufferPointer(rebasing: bytes[index ..< index + step])
                index += step
                state = step == remaining ? .dataEnding(header) : .data(header, remaining: remaining - step)
                return .data(stream: header.stream, bytes: piece)

            case .dataEnding(let header):
                state = .head
                return .dataEnd(header)

            case .skip(let remaining):
                guard index < bytes.count else { return nil }
                let step = min(remaining, bytes.count - index)
                index += step
                state = step == remaining ? .head : .skip(remaining: remaining - step)
            }
        }
    }

    private func reserveGathered(_ length: Int) {
        guard gatheredCapacity < length else { return }
        let capacity = max(length, 256)
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        if let gathered {
            grown.copyMemory(from: gathered, byteCount: gatheredCount)
            gathered.deallocate()
        }
        gathered = grown
        gatheredCapacity = capacity
    }
}
