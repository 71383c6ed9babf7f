import { PDFDocument, StandardFonts } from "pdf-lib";

/** A real PDF (text layer, Helvetica) with one page per entry, each page's paragraphs word-wrapped. */
export async function makePdf(pages: readonly string[][]): Promise<Uint8Array> {
  const doc = await PDFDocument.create();
  const font = await doc.embedFont(StandardFonts.Helvetica);
  for (const paragraphs of pages) {
    const page = doc.addPage([595, 842]);
    let y = 790;
    for (const paragraph of paragraphs) {
      let line = "";
      const flush = () => {
        page.drawText(line, { x: 50, y, size: 11, font });
        y -= 15;
        line = "";
      };
      for (const word of paragraph.split(/\s+/)) {
        const next = line ? `${line} ${word}` : word;
        if (font.widthOfTextAtSize(next, 11) > 495) {
          flush();
          line = word;
        } else line = next;
      }
      if (line) flush();
      y -= 15;
    }
  }
  return doc.save();
}
