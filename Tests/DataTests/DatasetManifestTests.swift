import Foundation
import XCTest
import Tensor
import Data

final class DatasetManifestTests: XCTestCase {
    func testFixtureParsesWithLineNumbersAndExtras() throws {
        let folder = TestSupport.fixtures.appendingPathComponent("manifest")
        let manifest = try DatasetManifest(contentsOf: folder, imageCheck: .decode)
        XCTAssertEqual(manifest.url.lastPathComponent, "metadata.jsonl")
        XCTAssertEqual(manifest.records.count, 2)
        let first = manifest.records[0], second = manifest.records[1]
        XCTAssertEqual(first.line, 1)
        XCTAssertEqual(second.line, 3, "the blank line still counts")
        XCTAssertEqual(first.fileName, "red.png")
        XCTAssertEqual(first.text, "a red square")
        XCTAssertEqual(first.prompt, "1 object, red square at center, black background")
        XCTAssertEqual(first.extra["score"], .double(0.5))
        XCTAssertEqual(first.split, "train")
        XCTAssertEqual(second.imageURL.lastPathComponent, "gray.png")
        XCTAssertEqual(second.extra["tags"], .array([.string("small"), .string("gray")]))
        XCTAssertEqual(second.extra["scene"], .object(["canvas": .int(2)]))
        XCTAssertNil(second.extra["file_name"], "known keys are not repeated in extra")
        XCTAssertEqual(manifest.splitCounts, ["train": 1, "heldout": 1])
        XCTAssertEqual(manifest.records(inSplit: "heldout").map(\.fileName), ["sub/gray.png"])
    }

    func testWriteThenReadRoundTrip() throws {
        let folder = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(folder.appendingPathComponent("a.png"))
        let line: [String: JSONValue] = ["file_name": .string("a.png"), "text": .string("t/1"), "prompt": .string("p"),
                                         "n": .int(3), "flag": .bool(true), "nothing": .null]
        try DatasetManifest.write([line, line], to: folder.appendingPathComponent("metadata.jsonl"))
        let text = try String(contentsOf: folder.appendingPathComponent("metadata.jsonl"), encoding: .utf8)
        XCTAssertTrue(text.hasPrefix(#"{"file_name":"a.png","flag":true,"n":3,"nothing":null,"prompt":"p","text":"t/1"}"#), text)
        let manifest = try DatasetManifest(contentsOf: folder)
        XCTAssertEqual(manifest.records.map(\.line), [1, 2])
        XCTAssertEqual(manifest.records[0].jsonObject, line)
    }

    // MARK: Bad manifests: each names the file and the line.

    /// Writes `lines` as the manifest of a folder holding `ok.png` and returns the error.
    private func failure(_ lines: [String], imageCheck: DatasetManifest.ImageCheck = .exists,
                         prepare: ((URL) throws -> Void)? = nil,
                         file: StaticString = #filePath, line: UInt = #line) throws -> ManifestError {
        let folder = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(folder.appendingPathComponent("ok.png"))
        try prepare?(folder)
        let url = folder.appendingPathComponent("metadata.jsonl")
        try lines.joined(separator: "\n").write(to: url, atomically: true, encoding: .utf8)
        do {
            _ = try DatasetManifest(contentsOf: url, imageCheck: imageCheck)
        } catch let error as ManifestError {
            XCTAssertEqual(error.file, url.path, file: file, line: line)
            return error
        }
        XCTFail("manifest was accepted", file: file, line: line)
        return ManifestError(file: "", line: -1, reason: "")
    }

    private let good = #"{"file_name": "ok.png", "text": "a", "prompt": "b"}"#

    func testInvalidJSONNamesTheLine() throws {
        let error = try failure([good, #"{"file_name": "ok.png", "text": "a", "#])
        XCTAssertEqual(error.line, 2)
        XCTAssertTrue(error.reason.contains("invalid JSON"), error.reason)
        XCTAssertTrue(error.description.hasSuffix(":2: \(error.reason)"), error.description)
    }

    func testLineThatIsNotAnObject() throws {
        let error = try failure([good, good, "[1, 2]"])
        XCTAssertEqual(error.line, 3)
        XCTAssertTrue(error.reason.contains("an array"), error.reason)
    }

    func testMissingKeyIsNamed() throws {
        let error = try failure([good, "", #"{"file_name": "ok.png", "prompt": "b"}"#])
        XCTAssertEqual(error.line, 3)
        XCTAssertTrue(error.reason.contains("missing key 'text'"), error.reason)
    }

    func testKeyOfWrongType() throws {
        let error = try failure([#"{"file_name": "ok.png", "text": "a", "prompt": 7}"#])
        XCTAssertEqual(error.line, 1)
        XCTAssertTrue(error.reason.contains("'prompt' must be a string, got a number"), error.reason)
    }

    func testMissingImage() throws {
        let error = try failure([good, #"{"file_name": "gone.png", "text": "a", "prompt": "b"}"#])
        XCTAssertEqual(error.line, 2)
        XCTAssertTrue(error.reason.contains("'gone.png' does not exist"), error.reason)
    }

    func testParentPathIsRefused() throws {
        let error = try failure([#"{"file_name": "sub/../../x.png", "text": "a", "prompt": "b"}"#], imageCheck: .none)
        XCTAssertEqual(error.line, 1)
        XCTAssertTrue(error.reason.contains("'..'"), error.reason)
    }

    func testAbsolutePathIsRefused() throws {
        let error = try failure([good, #"{"file_name": "/etc/passwd", "text": "a", "prompt": "b"}"#], imageCheck: .none)
        XCTAssertEqual(error.line, 2)
        XCTAssertTrue(error.reason.contains("absolute"), error.reason)
    }

    func testEmptyFileNameIsRefused() throws {
        let error = try failure([#"{"file_name": "", "text": "a", "prompt": "b"}"#])
        XCTAssertEqual(error.line, 1)
        XCTAssertTrue(error.reason.contains("empty"), error.reason)
    }

    func testSymlinkEscapingTheFolderIsRefused() throws {
        let outside = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(outside.appendingPathComponent("secret.png"))
        let error = try failure([good, #"{"file_name": "link.png", "text": "a", "prompt": "b"}"#]) { folder in
            try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("link.png"),
                                                       withDestinationURL: outside.appendingPathComponent("secret.png"))
        }
        XCTAssertEqual(error.line, 2)
        XCTAssertTrue(error.reason.contains("outside the dataset folder"), error.reason)
    }

    func testSymlinkedSubfolderEscapingIsRefused() throws {
        let outside = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(outside.appendingPathComponent("x.png"))
        let error = try failure([#"{"file_name": "elsewhere/x.png", "text": "a", "prompt": "b"}"#]) { folder in
            try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("elsewhere"), withDestinationURL: outside)
        }
        XCTAssertEqual(error.line, 1)
        XCTAssertTrue(error.reason.contains("outside the dataset folder"), error.reason)
    }

    func testSymlinkInsideTheFolderIsAccepted() throws {
        let folder = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(folder.appendingPathComponent("real.png"))
        try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("alias.png"),
                                                   withDestinationURL: folder.appendingPathComponent("real.png"))
        try #"{"file_name": "alias.png", "text": "a", "prompt": "b"}"#.write(to: folder.appendingPathComponent("metadata.jsonl"),
                                                                              atomically: true, encoding: .utf8)
        XCTAssertEqual(try DatasetManifest(contentsOf: folder, imageCheck: .decode).records.count, 1)
    }

    func testUnreadableImageIsRefusedWhenDecoding() throws {
        let bad = #"{"file_name": "broken.png", "text": "a", "prompt": "b"}"#
        let prepare: (URL) throws -> Void = { folder in
            try Foundation.Data("not a png".utf8).write(to: folder.appendingPathComponent("broken.png"))
        }
        let error = try failure([good, good, bad], imageCheck: .decode, prepare: prepare)
        XCTAssertEqual(error.line, 3)
        XCTAssertTrue(error.reason.contains("'broken.png' is unreadable"), error.reason)
        // Existence alone does not open the file.
        let folder = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(folder.appendingPathComponent("ok.png"))
        try prepare(folder)
        try [good, bad].joined(separator: "\n").write(to: folder.appendingPathComponent("metadata.jsonl"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try DatasetManifest(contentsOf: folder, imageCheck: .exists).records.count, 2)
    }

    func testImageThatIsAFolder() throws {
        let error = try failure([#"{"file_name": "dir", "text": "a", "prompt": "b"}"#]) { folder in
            try FileManager.default.createDirectory(at: folder.appendingPathComponent("dir"), withIntermediateDirectories: true)
        }
        XCTAssertTrue(error.reason.contains("is a folder"), error.reason)
    }

    func testEmptyAndMissingManifests() throws {
        let error = try failure(["", "  "])
        XCTAssertEqual(error.line, 0)
        XCTAssertTrue(error.reason.contains("no records"), error.reason)
        let folder = try TestSupport.temporaryFolder(self)
        XCTAssertThrowsError(try DatasetManifest(contentsOf: folder.appendingPathComponent("nope.jsonl"))) { error in
            XCTAssertTrue("\(error)".contains("cannot read manifest"), "\(error)")
        }
    }

    func testWindowsLineEndsAreAccepted() throws {
        let folder = try TestSupport.temporaryFolder(self)
        try TestSupport.writePNG(folder.appendingPathComponent("ok.png"))
        try (good + "\r\n" + good + "\r\n").write(to: folder.appendingPathComponent("metadata.jsonl"), atomically: true, encoding: .utf8)
        XCTAssertEqual(try DatasetManifest(contentsOf: folder).records.map(\.line), [1, 2])
    }
}
