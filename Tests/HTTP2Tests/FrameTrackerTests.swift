import Testing
@testable import HTTP2

/// One frame as it goes on the wire; the payload bytes are filler (the tracker never reads them).
struct Frame: CustomTestStringConvertible, Sendable {
    var type: UInt8
    var flags: UInt8 = 0
    /// As sent, the reserved bit included.
    var streamField: UInt32
    var length: Int

    static func data(stream: UInt32, length: Int, flags: UInt8 = 0) -> Frame {
        Frame(type: FrameTracker.dataType, flags: flags, streamField: stream, length: length)
    }

    var bytes: [UInt8] {
        var header: [UInt8] = [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags]
        header += (0..<4).map { UInt8(streamField >> (24 - 8 * $0) & 0xff) }
        // Filler that looks like frame headers: a tracker that reads payload bytes goes astray.
        return header + [UInt8](repeating: 0x11, count: length)
    }

    var stream: Int32 { Int32(streamField & 0x7fff_ffff) }
    var spliceable: Bool { type == FrameTracker.dataType && flags & FrameTracker.paddedFlag == 0 }
    var testDescription: String { "type \(type) flags \(flags) stream \(streamField) length \(length)" }
}

private let clientPreface = HTTPText.clientPrefacePrefix

/// A connection's first bytes from a client: SETTINGS, a request, its body in DATA frames (one
/// padded, one with a length over 16 bits, one empty with END_STREAM), a WINDOW_UPDATE.
private let conversation: [Frame] = [
    Frame(type: 4, streamField: 0, length: 18),                          // SETTINGS
    Frame(type: 1, flags: 0x4, streamField: 1, length: 40),              // HEADERS, END_HEADERS
    .data(stream: 1, length: 1000),
    .data(stream: 1, length: 300, flags: FrameTracker.paddedFlag),
    .data(stream: 0x8000_0001, length: 70_000),                          // reserved bit set
    Frame(type: 8, streamField: 0, length: 4),                           // WINDOW_UPDATE
    .data(stream: 1, length: 0, flags: 0x1),                             // END_STREAM
    Frame(type: 1, flags: 0x4, streamField: 3, length: 9),
]

/// What a tracker must say after the first `count` bytes of `frames` (after the preface, when
/// `withPreface`): a model that walks the frames one by one.
private struct Expected: Equatable, CustomStringConvertible {
    var headerMissing: Int
    var remaining: Int
    var dataRemaining: Int
    var type: UInt8
    var stream: Int32

    init(headerMissing: Int, remaining: Int = 0, dataRemaining: Int = 0, type: UInt8 = 0, stream: Int32 = 0) {
        self.headerMissing = headerMissing
        self.remaining = remaining
        self.dataRemaining = dataRemaining
        self.type = type
        self.stream = stream
    }

    init(_ tracker: FrameTracker) {
        self.init(headerMissing: tracker.headerMissing, remaining: tracker.remaining, dataRemaining: tracker.dataRemaining,
                  type: tracker.type, stream: tracker.stream)
    }

    init(after count: Int, of frames: [Frame], withPreface: Bool) {
        var left = count
        if withPreface {
            if left < clientPreface.count {
                self.init(headerMissing: 0)
                return
            }
            left -= clientPreface.count
        }
        self.init(headerMissing: 9)
        for frame in frames {
            if left < 9 {
                headerMissing = 9 - left
                return
            }
            left -= 9
            let payloadSeen = min(left, frame.length)
            left -= payloadSeen
            remaining = frame.length - payloadSeen
            dataRemaining = frame.spliceable ? remaining : 0
            type = frame.type
            stream = frame.stream
            headerMissing = remaining > 0 ? 0 : 9
            if remaining > 0 { return }
        }
    }

    var description: String {
        "headerMissing \(headerMissing) remaining \(remaining) dataRemaining \(dataRemaining) type \(type) stream \(stream)"
    }
}

private func advance(_ tracker: inout FrameTracker, _ bytes: ArraySlice<UInt8>) {
    bytes.withUnsafeBytes { tracker.advance($0) }
}

@Suite("FrameTracker: frame boundaries in received bytes")
struct FrameTrackerTests {
    @Test("One header read whole: type, flags, stream without the reserved bit, a 24-bit length", arguments: [
        Frame.data(stream: 1, length: 16_384),
        Frame.data(stream: 0x7fff_ffff, length: 0xff_ffff),
        Frame.data(stream: 0x8000_0005, length: 0x01_0000),
        Frame.data(stream: 3, length: 1, flags: 0x1),
        Frame.data(stream: 3, length: 256, flags: FrameTracker.paddedFlag),
        Frame.data(stream: 3, length: 256, flags: FrameTracker.paddedFlag | 0x1),
        Frame(type: 1, flags: 0x5, streamField: 9, length: 77),
        Frame(type: 6, streamField: 0, length: 8),
        Frame(type: 0xff, flags: 0xff, streamField: 0xffff_ffff, length: 0x12_3456),
    ])
    func oneHeader(_ frame: Frame) {
        var tracker = FrameTracker(expectsPreface: false)
        #expect(tracker.headerMissing == 9)
        advance(&tracker, frame.bytes.prefix(9))
        #expect(tracker.type == frame.type)
        #expect(tracker.flags == frame.flags)
        #expect(tracker.stream == frame.stream)
        #expect(tracker.remaining == frame.length)
        #expect(tracker.dataRemaining == (frame.spliceable ? frame.length : 0), "padded DATA and other frames are never spliced")
        #expect(tracker.headerMissing == 0)
    }

    @Test("A frame without payload is followed at once by the next header")
    func emptyFrame() {
        var tracker = FrameTracker(expectsPreface: false)
        advance(&tracker, Frame.data(stream: 1, length: 0, flags: 0x1).bytes[...])
        #expect(tracker.remaining == 0 && tracker.dataRemaining == 0)
        #expect(tracker.headerMissing == 9)
        #expect(tracker.flags == 0x1)
    }

    @Test("A header read a few bytes at a time says how many are missing", arguments: 1...8)
    func partialHeader(_ have: Int) {
        var tracker = FrameTracker(expectsPreface: false)
        let bytes = Frame.data(stream: 5, length: 500).bytes
        advance(&tracker, bytes.prefix(have))
        #expect(tracker.headerMissing == 9 - have)
        #expect(tracker.dataRemaining == 0, "no payload is announced before the header is whole")
        advance(&tracker, bytes[have..<9])
        #expect(tracker.headerMissing == 0)
        #expect(tracker.dataRemaining == 500)
        #expect(tracker.stream == 5)
    }

    @Test("The client preface is passed over on the server side only")
    func preface() {
        var server = FrameTracker(expectsPreface: true)
        // In the preface no frame header is awaited: nothing to read alone.
        #expect(server.headerMissing == 0)
        advance(&server, HTTPText.clientPrefacePrefix.prefix(10))
        #expect(server.headerMissing == 0)
        advance(&server, HTTPText.clientPrefacePrefix.dropFirst(10))
        #expect(server.headerMissing == 9)

        let frame = Frame.data(stream: 1, length: 42).bytes
        advance(&server, frame[...])
        var client = FrameTracker(expectsPreface: false)
        advance(&client, frame[...])
        #expect(Expected(server) == Expected(client))
        #expect(client.headerMissing == 9)
    }

    @Test("Any split of a conversation leaves the tracker where the frames say",
          arguments: [1, 2, 3, 7, 8, 9, 10, 17, 24, 25, 1000, 1 << 20], [false, true])
    func splits(_ piece: Int, _ withPreface: Bool) {
        let bytes = (withPreface ? clientPreface : []) + conversation.flatMap(\.bytes)
        var tracker = FrameTracker(expectsPreface: withPreface)
        var offset = 0
        var mismatches = 0
        while offset < bytes.count {
            let end = min(offset + piece, bytes.count)
            advance(&tracker, bytes[offset..<end])
            offset = end
            let expected = Expected(after: offset, of: conversation, withPreface: withPreface)
            if Expected(tracker) != expected {
                mismatches += 1
                if mismatches <= 3 { Issue.record("after \(offset) bytes: \(Expected(tracker)), expected \(expected)") }
            }
        }
        #expect(mismatches == 0)
        #expect(tracker.headerMissing == 9, "the conversation ends on a frame boundary")
        #expect(tracker.stream == 3 && tracker.type == 1)
    }

    @Test("Splits at every offset of a header and a payload agree with the model")
    func everyTwoPieceSplit() {
        let frames = [Frame.data(stream: 7, length: 20), Frame(type: 3, streamField: 7, length: 4), Frame.data(stream: 9, length: 5)]
        let bytes = frames.flatMap(\.bytes)
        for cut in 0...bytes.count {
            var tracker = FrameTracker(expectsPreface: false)
            advance(&tracker, bytes[..<cut])
            #expect(Expected(tracker) == Expected(after: cut, of: frames, withPreface: false), "cut at \(cut)")
            advance(&tracker, bytes[cut...])
            #expect(Expected(tracker) == Expected(after: bytes.count, of: frames, withPreface: false), "cut at \(cut), then the rest")
        }
    }

    /// The connection splices a large DATA payload instead of reading it, tells the tracker with
    /// `skip`, then reads the next header alone (`headerMissing` bytes) so that the next payload can
    /// be spliced whole.
    @Test("Spliced payload bytes are skipped; then exactly the next header is missing", arguments: [
        (read: 0, spliced: [70_000]),
        (read: 1, spliced: [69_999]),
        (read: 4096, spliced: [30_000, 35_904]),
        (read: 69_999, spliced: [1]),
    ])
    func splicedPayload(_ read: Int, _ spliced: [Int]) {
        let first = Frame.data(stream: 1, length: 70_000).bytes
        let next = Frame.data(stream: 3, length: 20_000).bytes
        var tracker = FrameTracker(expectsPreface: false)
        advance(&tracker, first[..<(9 + read)])
        #expect(tracker.dataRemaining == 70_000 - read)
        var left = 70_000 - read
        for count in spliced {
            tracker.skip(count)
            left -= count
            #expect(tracker.dataRemaining == left)
            #expect(tracker.headerMissing == (left > 0 ? 0 : 9))
        }
        #expect(tracker.headerMissing == 9)
        advance(&tracker, next[..<4])
        #expect(tracker.headerMissing == 5)
        #expect(tracker.dataRemaining == 0)
        advance(&tracker, next[4..<9])
        #expect(tracker.stream == 3)
        #expect(tracker.dataRemaining == 20_000)
    }
}
