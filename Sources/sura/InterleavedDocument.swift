import Foundation
import Models
import Tensor

/// `sura generate --interleaved`: MiniGPT-5's text-and-image documents. The LLM continues the
/// prompt; wherever it emits the vokens, the voken mapper turns their states into the base
/// UNet's conditioning and an image is drawn there. Writes document.md and document.html beside
/// the PNGs.
struct InterleavedDocument {
    let folder: PipelineFolder
    let checkpointPath: String
    let llmOverride: String?
    let scheduler: String?
    let options: TextToImageOptions
    let seed: UInt64

    /// What was written.
    struct Written {
        var markdown: URL
        var html: URL
        var images: [URL]
        var text: String
    }

    /// - Throws: `CommandFailure` naming the checkpoint when it is not a voken mapper trained with
    ///   the LM loss (no `voken_lm_head`); what loading and generation throw.
    func write(prompt: String, generation: LlamaGenerationConfig, maxNewTokens: Int, maxImages: Int,
               to directory: URL, progress: (String) -> Void) throws -> Written {
        let url = URL(fileURLWithPath: checkpointPath)
        let checkpoint = try AdapterCheckpoint(contentsOf: url)
        guard checkpoint.type == .vokenMapper, let mapper = checkpoint.adapter as? VokenMapper else {
            throw CommandFailure("--interleaved needs a voken_mapper checkpoint; \(url.path) holds a \(checkpoint.type.rawValue)")
        }
        guard let rows = checkpoint.extraTensors["voken_lm_head"] else {
            throw CommandFailure("\(url.path) has no voken_lm_head: it was trained without MiniGPT-5's LM loss; train it with adapter.loss.lm > 0 (configs/voken_mapper.yaml)")
        }
        let conditioning = try AdapterConditioning.load(checkpoint, from: url, folder: folder, llm: llmOverride)
        guard let encoder = conditioning.llm, let vokens = conditioning.vokens else {
            throw CommandFailure("\(url.path): the voken mapper needs its LLM and voken rows")
        }
        let generator = try InterleavedGenerator(encoder: encoder, vokens: vokens, head: VokenLanguageHead(initial: rows))
        progress("writing after \"\(prompt)\" (at most \(maxNewTokens) tokens, \(maxImages) image(s))")
        let parts = try generator.generate(prompt: prompt, maxNewTokens: maxNewTokens, maxImages: maxImages, config: generation)

        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let negative = try withoutGrad { try mapper.negativeConditioning(batchSize: 1) }
        let pipeline = try folder.makePipeline(scheduler: scheduler)
        var markdown = "**\(prompt)**", html = "<p><b>\(Self.escape(prompt))</b>", text = prompt
        var images: [URL] = []
        for part in parts {
            switch part {
            case .text(let piece):
                markdown += piece
                html += Self.escape(piece).replacingOccurrences(of: "\n", with: "<br>\n")
                text += piece
            case .image(let states):
                let name = "image-\(images.count + 1).png"
                let c = try withoutGrad { try mapper(states) }
                let result = try pipeline.generate(conditioning: c, negativeConditioning: negative,
                                                   seeds: [seed &+ UInt64(images.count)], options: options)
                let file = directory.appendingPathComponent(name)
                try result.pngImage(at: 0).write(to: file)
                images.append(file)
                progress("image \(images.count): \(file.path)")
                markdown += "\n\n![image \(images.count)](\(name))\n\n"
                html += "</p>\n<p><img src=\"\(name)\" alt=\"image \(images.count)\" width=\"256\"></p>\n<p>"
                text += " [image \(images.count)] "
            }
        }
        html = "<!doctype html>\n<meta charset=\"utf-8\">\n<title>\(Self.escape(prompt))</title>\n<style>img{image-rendering:pixelated}</style>\n" + html + "</p>\n"
        let markdownURL = directory.appendingPathComponent("document.md")
        let htmlURL = directory.appendingPathComponent("document.html")
        try Data((markdown + "\n").utf8).write(to: markdownURL, options: .atomic)
        try Data(html.utf8).write(to: htmlURL, options: .atomic)
        return Written(markdown: markdownURL, html: htmlURL, images: images, text: text)
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
