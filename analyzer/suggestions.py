"""Practice suggestions from rules on the measures (zh-TW or English); never a diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

from analyzer.scoring import FLUENCY, RHYTHM, AgeGroup, Band

JITTER_MDVP = 1.04
SHIMMER_MDVP = 3.81


@dataclass(frozen=True)
class Tip:
    area_zh: str
    area_en: str
    zh: str
    en: str


SLOW = Tip(
    "說話速度",
    "speaking rate",
    "說話速度比一般範圍慢一些，可以試著把同一個詞組的字連在一起說。",
    "Your pace was slower than the usual range; try saying the words of a phrase together.",
)
FAST = Tip(
    "說話速度",
    "speaking rate",
    "說話速度比一般範圍快，可以放慢一點，讓每個音節都清楚。",
    "Your pace was faster than the usual range; slow down a little so every syllable is clear.",
)
PAUSES = Tip(
    "停頓",
    "pausing",
    "停頓佔了比較多的時間，可以先默讀一次，再試著一口氣讀完一個詞組。",
    "Pauses took up a large share of the time; read the sentence silently first, "
    "then try each phrase on one breath.",
)
RUNS = Tip(
    "連續說話長度",
    "phrase length",
    "每次停頓之間說的音節比較少，可以練習把短語說得長一點再換氣。",
    "Few syllables were said between pauses; practise longer phrases before taking a breath.",
)
RHYTHM_TIP = Tip(
    "節奏",
    "rhythm",
    "音節的長短變化和一般說話節奏不太一樣，可以跟著示範錄音一起唸，感受輕重音。",
    "Syllable timing differed from typical connected speech; read along with a model "
    "recording to feel the stressed and unstressed syllables.",
)
NOISE = Tip(
    "錄音環境",
    "recording conditions",
    "背景噪音偏高，下次請在安靜的地方錄音，手機離嘴巴約一個手掌的距離。",
    "Background noise was high; next time record in a quiet room with the phone about a "
    "hand's width from your mouth.",
)
VOICE = Tip(
    "聲音穩定度",
    "voice steadiness",
    "持續母音的穩定度數值高於參考值；這不是診斷，如有疑問請與您的語言治療師討論。",
    "Steadiness values of the sustained vowel were above reference thresholds; this is "
    "not a diagnosis - discuss it with your speech therapist if you have concerns.",
)
CLIPPED = Tip(
    "錄音環境",
    "recording conditions",
    "錄音音量太大而有削波失真，請把麥克風（手機）離嘴巴遠一點，或稍微小聲一點再錄一次。",
    "The recording was clipped (too loud for the microphone); move the microphone (phone) "
    "a little further from your mouth, or speak a little more softly, and record again.",
)
QUIET = Tip(
    "錄音環境",
    "recording conditions",
    "錄音音量很小，請把麥克風放在離嘴巴約一個手掌的距離。",
    "The recording was very quiet; hold the microphone about a hand's width from your mouth.",
)
RECORD_AGAIN_ZH = "這段錄音的品質不足以評分節奏與流暢度，請依上述建議重新錄音。"
RECORD_AGAIN_EN = (
    "The recording's quality was not good enough to score timing; please record again as "
    "suggested above."
)
GOOD_ZH = "這次的速度和停頓都在一般範圍內，請繼續保持練習。"
GOOD_EN = "Pace and pausing were within the usual range this time; keep practising."
VOWEL_OK_ZH = "持續母音的穩定度數值在參考範圍內，請繼續保持練習。"
VOWEL_OK_EN = (
    "Steadiness values of the sustained vowel were within reference ranges; keep practising."
)
NOTE_ZH = "（以上為練習建議，並非醫療診斷。）"
NOTE_EN = "(These are practice suggestions, not a diagnosis.)"


def _band(measure: str, age: AgeGroup) -> Band:
    comp = next(c for c in (*FLUENCY, *RHYTHM) if c.measure == measure)
    return comp.adult if age == "adult" else comp.child


def _outside(measures: dict[str, float | None], name: str, age: AgeGroup) -> int:
    """-1 below the typical band, +1 above it, 0 inside or unmeasured."""
    value = measures.get(name)
    if value is None:
        return 0
    band = _band(name, age)
    return -1 if value < band.ideal_low else (1 if value > band.ideal_high else 0)


def _tips(
    measures: dict[str, float | None], age: AgeGroup, sustained: bool, defective: bool
) -> list[Tip]:
    tips: list[Tip] = []
    if not sustained and not defective:
        rate = _outside(measures, "speech_rate", age)
        tips += [SLOW] if rate < 0 else ([FAST] if rate > 0 else [])
        tips += [PAUSES] if _outside(measures, "pause_ratio", age) > 0 else []
        tips += [RUNS] if _outside(measures, "mean_length_of_run", age) < 0 else []
        irregular = any(_outside(measures, m, age) for m in ("isi_varco", "isi_npvi"))
        tips += [RHYTHM_TIP] if irregular else []
        snr = measures.get("snr_db")
        tips += [NOISE] if snr is not None and snr < 15.0 else []
    else:
        jitter = measures.get("jitter_local_percent") or 0.0
        shimmer = measures.get("shimmer_local_percent") or 0.0
        tips += [VOICE] if jitter > JITTER_MDVP or shimmer > SHIMMER_MDVP else []
    return tips


def suggest(
    measures: dict[str, float | None], age: AgeGroup, language: str, sustained: bool,
    quality_codes: list[str] | None = None, defective: bool = False,
    extra: list[Tip] | None = None,
) -> tuple[str, list[str]]:  # fmt: skip
    """One suggestion text and the list of improvement areas, in zh-TW or English.

    quality_codes: codes of analyzer.quality findings (recording advice comes first);
    defective: a finding made the timing scores unreliable, so no advice is drawn from the
    timing measures (they describe the recording, not the speaker); extra: tips from the
    pronunciation assessment, appended.
    """
    english = language.lower().startswith("en")
    codes = quality_codes or []
    tips = [CLIPPED] if "clipped" in codes else []
    tips += [QUIET] if "low_level" in codes else []
    tips += _tips(measures, age, sustained, defective)
    tips += extra or []
    if defective:
        tips.append(Tip("錄音環境", "recording conditions", RECORD_AGAIN_ZH, RECORD_AGAIN_EN))
        if "low_snr" in codes and NOISE not in tips:
            tips.insert(0, NOISE)
    if not tips:
        if sustained:
            return (VOWEL_OK_EN if english else VOWEL_OK_ZH), []
        return (GOOD_EN if english else GOOD_ZH), []
    body = " ".join(t.en for t in tips) if english else "".join(t.zh for t in tips)
    areas = list(dict.fromkeys(t.area_en if english else t.area_zh for t in tips))
    return f"{body} {NOTE_EN}" if english else f"{body}{NOTE_ZH}", areas
