/// Follows frame boundaries in the bytes a connection receives, reading nothing but the 9-byte
/// frame headers, so the connection knows when the next bytes are the payload of a large DATA
/// frame that it can splice instead of read.
public struct FrameTracker: Sendable {
    /// Bytes of the client connection preface still to pass (a server receives one).
    private var preface: Int
    /// The header so far: its first byte apart, the other eight shifted in.
    private var firstByte = 0
    private var rest: UInt64 = 0
    private var headerFill = 0
    public private(set) var remaining = 0
    public private(set) var type: UInt8 = 0
    public private(set) var flags: UInt8 = 0
    public private(set) var stream: Int32 = 0

    public init(expectsPreface: Bool) {
        preface = expectsPreface ? 24 : 0
    }

    public static let dataType: UInt8 = 0
    public static let paddedFlag: UInt8 = 0x8

    /// Payload bytes still to come of an unpadded DATA frame, 0 otherwise.
    public var dataRemaining: Int {
        type == Self.dataType && flags & Self.paddedFlag == 0 ? remaining : 0
    }

    public mutating func advance(_ bytes: UnsafeRawBufferPointer) {
        var index = 0
        let count = bytes.count
        while index < count {
            if preface > 0 {
                let step = min(preface, count - index)
                preface -= step
                index += step
            } else if remaining > 0 {
                let step = min(remaining, count - index)
                remaining -= step
                index += step
            } else {
                if headerFill == 0 {
                    firstByte = Int(bytes[index])
                    rest = 0
                } else {
                    rest = rest << 8 | UInt64(bytes[index])
                }
                headerFill += 1
                index += 1
                if headerFill == 9 {
                    // rest: length (2 low bytes), type, flags, stream id (4 bytes).
                    headerFill = 0
                    stream = Int32(truncatingIfNeeded: rest & 0x7fff_ffff)
                    flags = UInt8(truncatingIfNeeded: rest >> 32)
                    type = UInt8(truncatingIfNeeded: rest >> 40)
                    remaining = firstByte << 16 | Int((rest >> 48) & 0xffff)
                }
            }
        }
    }

    /// Bytes missing from the frame header being read (9 at a frame boundary).
    public var headerMissing: Int { remaining == 0 && preface == 0 ? 9 - headerFill : 0 }

    /// `count` payload bytes were consumed without being seen (spliced).
    public mutating func skip(_ count: Int) {
        remaining -= count
    }
}
