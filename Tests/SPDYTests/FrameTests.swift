import XCTest
@testable import SPDY

final class FrameTests: XCTestCase {
    /// One of every frame the reader decodes, an unknown control type it must skip, and DATA
    /// frames empty, short and longer than a split.
    private func sampleStream() -> (bytes: [UInt8], frames: [ReadFrame]) {
        var bytes: [UInt8] = []
        var frames: [ReadFrame] = []
        func control(_ type: ControlType, flags: UInt8 = 0, _ encode: (inout [UInt8]) -> Void) {
            let start = bytes.count
            encode(&bytes)
            frames.append(.control(type, flags: flags, payload: Array(bytes[(start + 8)...])))
        }
        control(.synStream, flags: 0) {
            FrameEncoder.synStream(stream: 1, associated: 0, priority: 3, flags: 0, compressedBlock: [1, 2, 3, 4, 5], to: &$0)
        }
        control(.synReply, flags: 1) { FrameEncoder.synReply(stream: 1, fin: true, compressedBlock: [9, 8, 7], to: &$0) }
        control(.headers) { FrameEncoder.headers(stream: 3, fin: false, compressedBlock: [6], to: &$0) }
        control(.rstStream) { FrameEncoder.rstStream(stream: 5, status: .cancel, to: &$0) }
        control(.settings) { FrameEncoder.settings([SettingsEntry(flags: 1, id: 7, value: 65536)], to: &$0) }
        control(.ping) { FrameEncoder.ping(id: 1, to: &$0) }
        // An unknown control type (and NOOP, 5): skipped, not reported.
        bytes += [0x80, 0x03, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x03, 0xaa, 0xbb, 0xcc]
        bytes += [0x80, 0x03, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00]
        control(.goAway) { FrameEncoder.goAway(lastGoodStream: 7, status: .protocolError, to: &$0) }
        control(.windowUpdate) { FrameEncoder.windowUpdate(stream: 3, delta: 1000, to: &$0) }
        for (stream, payload, fin) in [(UInt32(1), [UInt8](), true), (3, Array("hello".utf8), false),
                                       (3, (0..<300).map { UInt8($0 & 0xff) }, true)] {
            FrameEncoder.data(stream: stream, fin: fin, payload: payload, to: &bytes)
            frames.append(.data(DataFrameHeader(stream: stream, length: payload.count, fin: fin), payload: payload))
        }
        return (bytes, frames)
    }

    func testEveryTwoWaySplitReadsTheSameFrames() throws {
        let (bytes, frames) = sampleStream()
        XCTAssertEqual(try readFrames(bytes, cuts: []), frames)
        for cut in 0...bytes.count {
            XCTAssertEqual(try readFrames(bytes, cuts: [cut]), frames, "cut at \(cut)")
        }
    }

    func testEveryThreeWaySplitReadsTheSameFrames() throws {
        let (bytes, frames) = sampleStream()
        for first in stride(from: 0, through: bytes.count, by: 3) {
            for second in stride(from: first, through: bytes.count, by: 5) {
                XCTAssertEqual(try readFrames(bytes, cuts: [first, second]), frames, "cuts at \(first), \(second)")
            }
        }
    }

    func testOneByteAtATime() throws {
        let (bytes, frames) = sampleStream()
        XCTAssertEqual(try readFrames(bytes, cuts: Array(1..<bytes.count)), frames)
    }

    func testDataHeaderEncodesAndDecodes() {
        let table: [(DataFrameHeader, [UInt8])] = [
            (DataFrameHeader(stream: 1, length: 0, fin: true), [0, 0, 0, 1, 1, 0, 0, 0]),
            (DataFrameHeader(stream: 0x7fff_ffff, length: maxFrameLength, fin: false), [0x7f, 0xff, 0xff, 0xff, 0, 0xff, 0xff, 0xff]),
            (DataFrameHeader(stream: 0x0102_0304, length: 0x05_0607, fin: false), [1, 2, 3, 4, 0, 5, 6, 7]),
        ]
        for (header, bytes) in table {
            XCTAssertEqual(header.bytes, bytes)
            XCTAssertEqual(bytes.withUnsafeBytes { DataFrameHeader(decoding: $0) }, header)
        }
        var ping: [UInt8] = []
        FrameEncoder.ping(id: 1, to: &ping)
        XCTAssertNil(ping.withUnsafeBytes { DataFrameHeader(decoding: $0) }, "a control frame is no DATA header")
        XCTAssertEqual(ping.withUnsafeBytes { FrameHead($0) }, .control(version: 3, type: 6, flags: 0, length: 4))
    }

    /// A connection that splices: it reads the head, learns the payload length, takes the payload
    /// elsewhere, and the reader reports the frame's end.
    func testSkippedPayloadEndsTheFrame() throws {
        let reader = FrameReader()
        var bytes: [UInt8] = []
        FrameEncoder.data(stream: 3, fin: true, payload: [UInt8](repeating: 7, count: 1000), to: &bytes)
        FrameEncoder.ping(id: 1, to: &bytes)
        XCTAssertEqual(reader.headMissing, 8)
        var index = 0
        try bytes.withUnsafeBytes { all in
            let head = UnsafeRawBufferPointer(rebasing: all[0..<8])
            guard case .dataHead(let header) = try reader.next(head, from: &index) else { return XCTFail() }
            XCTAssertEqual(header, DataFrameHeader(stream: 3, length: 1000, fin: true))
            XCTAssertNil(try reader.next(head, from: &index))
            XCTAssertEqual(reader.dataRemaining, 1000)
            reader.skipData(600)
            XCTAssertEqual(reader.dataRemaining, 400)
            reader.skipData(400)
            index = 1008
            guard case .dataEnd(let ended) = try reader.next(all, from: &index) else { return XCTFail() }
            XCTAssertTrue(ended.fin)
            guard case .control(.ping, _, _) = try reader.next(all, from: &index) else { return XCTFail() }
        }
    }

    func testBadFramesAreTypedErrors() {
        var tooLong: [UInt8] = []
        FrameEncoder.synReply(stream: 1, fin: false, compressedBlock: [UInt8](repeating: 0, count: 100), to: &tooLong)
        let table: [(String, [UInt8], Int, SPDYError)] = [
            ("version 2", [0x80, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1], 1024,
             .unsupportedVersion(2)),
            ("control frame over the limit", tooLong, 64, .frameTooLarge(type: 2, length: 104, limit: 64)),
            // Refused from the head alone, before a byte of its 16 MiB payload is gathered.
            ("SPDY's largest SYN_STREAM", [0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff], 65536,
             .frameTooLarge(type: 1, length: maxFrameLength, limit: 65536)),
        ]
        for (name, bytes, limit, expected) in table {
            XCTAssertThrowsError(try readFrames(bytes, cuts: [], maxControlLength: limit), name) {
                XCTAssertEqual($0 as? SPDYError, expected, name)
            }
        }
    }

    func testUnknownControlFramesAreSkippedWhateverTheirLength() throws {
        // 1 MiB of an unknown type: skipped, never gathered, whatever the control-frame limit.
        var bytes: [UInt8] = [0x80, 0x03, 0x00, 0x0a, 0x00, 0x10, 0x00, 0x00] + [UInt8](repeating: 0, count: 1 << 20)
        FrameEncoder.ping(id: 3, to: &bytes)
        XCTAssertEqual(try readFrames(bytes, cuts: [100, 5000], maxControlLength: 16),
                       [.control(.ping, flags: 0, payload: [0, 0, 0, 3])])
    }
}
