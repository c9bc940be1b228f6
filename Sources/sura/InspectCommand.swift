import ArgumentParser
import Foundation
import Tensor

/// `sura inspect FILE`: a safetensors or GGUF file's metadata and tensors.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List a safetensors or GGUF file's metadata and tensors (name, dtype, shape, bytes).")

    @Argument(help: "A .safetensors or .gguf file.")
    var file: String

    func run() throws {
        print(try ModelFileInspector.describe(url: URL(fileURLWithPath: file)))
    }
}
