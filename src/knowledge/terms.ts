import { stemmer } from "stemmer";
import { eng } from "stopword";

const STOPWORDS = new Set([...eng, "does", "did", "do", "can", "could", "would", "should", "which", "what", "how", "why", "when", "where", "who", "whom", "tell", "please", "much", "many", "use", "used"]);
const words = new Intl.Segmenter("en", { granularity: "word" });

/** The content words of a text, lower-cased and stemmed (Porter), stopwords left out, in order. */
export function terms(text: string): string[] {
  const out: string[] = [];
  for (const { segment, isWordLike } of words.segment(text.toLowerCase())) {
    if (!isWordLike || STOPWORDS.has(segment)) continue;
    out.push(/^[a-z]+$/.test(segment) ? stemmer(segment) : segment);
  }
  return out;
}
