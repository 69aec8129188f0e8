import CZlib
import XCTest
@testable import SPDY

final class HeaderCompressionTests: XCTestCase {
    func testDictionaryIsTheSpecificationsConstant() {
        let bytes = HeaderDictionary.bytes
        XCTAssertEqual(bytes.count, 1423)
        let checksum = bytes.withUnsafeBufferPointer { adler32(adler32(0, nil, 0), $0.baseAddress, uInt($0.count)) }
        XCTAssertEqual(UInt32(checksum), 0xE3C6_A7C2)
        XCTAssertEqual(HeaderDictionary.adler32, 0xE3C6_A7C2)
    }

    func testBlockWireFormat() throws {
        let block: HeaderBlock = ["StreamType": "error", "port": "80"]
        let expected: [UInt8] = [0, 0, 0, 2,
                                 0, 0, 0, 10] + Array("streamtype".utf8) + [0, 0, 0, 5] + Array("error".utf8)
            + [0, 0, 0, 4] + Array("port".utf8) + [0, 0, 0, 2] + Array("80".utf8)
        XCTAssertEqual(block.encoded(), expected)
        let decoded = try expected.withUnsafeBytes { try HeaderBlock(decoding: $0) }
        XCTAssertEqual(decoded, ["streamtype": "error", "port": "80"])
        XCTAssertEqual(decoded["StreamType"], "error")
    }

    func testInvalidBlocksAreRefused() {
        let table: [(String, [UInt8])] = [
            ("too short", [0, 0]),
            ("count larger than the bytes", [0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("name past the end", [0, 0, 0, 1, 0, 0, 0, 9, 0x61, 0, 0, 0, 0]),
            ("empty name", [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("bytes after the last entry", [0, 0, 0, 1, 0, 0, 0, 1, 0x61, 0, 0, 0, 0, 0xff]),
        ]
        for (name, bytes) in table {
            XCTAssertThrowsError(try bytes.withUnsafeBytes { try HeaderBlock(decoding: $0) }, name) {
                guard case .invalidHeaderBlock = $0 as? SPDYError else { return XCTFail("\(name): \($0)") }
            }
        }
    }

    /// Several blocks on one zlib stream per direction, each decodable only after the ones before.
    func testSeveralBlocksOnOneStream() throws {
        let compressor = try HeaderCompressor()
        let decompressor = try HeaderDecompressor()
        let blocks: [HeaderBlock] = [
            ["streamtype": "error", "port": "80", "requestid": "0"],
            ["streamtype": "data", "port": "80", "requestid": "0"],
            [:],
            HeaderBlock((0..<200).map { .init(name: "x-name-\($0)", value: String(repeating: "v", count: $0)) }),
            ["streamtype": "error", "port": "8080", "requestid": "1"],
        ]
        var sizes: [Int] = []
        for block in blocks {
            var compressed: [UInt8] = []
            try compressor.compress(block, appendingTo: &compressed)
            sizes.append(compressed.count)
            // A sync flush ends every block.
            XCTAssertEqual(Array(compressed.suffix(4)), [0, 0, 0xff, 0xff])
            XCTAssertEqual(try compressed.withUnsafeBytes { try decompressor.decompress($0) }, block)
        }
        XCTAssertLessThan(sizes[4], sizes[0], "the context carries over: a repeated block compresses better")
    }

    func testZlibBombStopsAtTheLimit() throws {
        let compressor = try HeaderCompressor()
        // 4 MiB of one name: a few KiB compressed.
        let plain = [UInt8](repeating: 0x61, count: 4 << 20)
        var compressed: [UInt8] = []
        try plain.withUnsafeBytes { try compressor.compress($0, appendingTo: &compressed) }
        XCTAssertLessThan(compressed.count, 64 * 1024)
        let decompressor = try HeaderDecompressor(limit: 64 * 1024)
        XCTAssertThrowsError(try compressed.withUnsafeBytes { try decompressor.inflate($0) }) {
            XCTAssertEqual($0 as? SPDYError, .headerBlockTooLarge(limit: 64 * 1024))
        }
        // Exactly at the limit is fine.
        let atLimit = try HeaderCompressor()
        var exact: [UInt8] = []
        try [UInt8](repeating: 0x62, count: 64 * 1024).withUnsafeBytes { try atLimit.compress($0, appendingTo: &exact) }
        XCTAssertEqual(try exact.withUnsafeBytes { try HeaderDecompressor(limit: 64 * 1024).inflate($0) }.count, 64 * 1024)
    }

    func testGarbageIsACompressionError() throws {
        let decompressor = try HeaderDecompressor()
        XCTAssertThrowsError(try [UInt8](repeating: 0xff, count: 32).withUnsafeBytes { try decompressor.inflate($0) })
        // A zlib stream primed with another dictionary.
        XCTAssertThrowsError(try [UInt8]([0x78, 0xbb, 0x00, 0x00, 0x00, 0x01, 0x03, 0x00]).withUnsafeBytes {
            try HeaderDecompressor().inflate($0)
        }) {
            XCTAssertEqual($0 as? SPDYError, .invalidHeaderBlock("zlib asks for an unknown dictionary"))
        }
    }
}
