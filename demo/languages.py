"""Phrase tables of the synthetic shape world, one class per PALO language.

Concepts are indices into `COLORS`, `SHAPES` and `SIDES`. Every `ask_*` method returns
`(question, answer)`; answers are short and canonical (one colour word, one shape noun, one
number word, one position word or phrase) so that exact match is meaningful.

Agreement: fr/es/ru answers to "what colour is the X?" agree with X (l'étoile -> "verte",
звезда -> "зелёная"); ar answers with the colour noun (masculine, as لون is); hi/ur shapes
are all masculine, so their colour answers are the masculine forms.
"""

from __future__ import annotations

import random

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
SIDES = ("left", "right", "top", "bottom")  # side // 2 = axis (0 horizontal, 1 vertical)
# Text-only world knowledge, colour of: sea, grass, ripe banana, ripe tomato, orange, eggplant.
WORLD_COLORS = (2, 1, 3, 0, 5, 4)
# Text-only riddles, shape with: three corners, four equal sides, perfectly round, five points.
RIDDLE_SHAPES = (2, 1, 0, 3)


def pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


def _join(items, sep, last):
    return items[0] if len(items) == 1 else sep.join(items[:-1]) + last + items[-1]


def _cap(text):
    return text[0].upper() + text[1:]


class Language:
    code = ""
    name = ""  # PALO's folder name for the language
    spaced = True  # words are separated by spaces (not so in Chinese and Japanese)
    colors: tuple = ()  # dictionary forms (masculine singular); the translation answers
    shapes: tuple = ()  # dictionary forms; the shape answers
    numbers: tuple = ()  # answers to "how many shapes?" for 1, 2, 3
    sides: tuple = ()  # answers for left, right, top, bottom
    describe_prompts: tuple = ()
    world: tuple = ()  # (question, answer), aligned with WORLD_COLORS
    riddles: tuple = ()  # questions, aligned with RIDDLE_SHAPES
    translate_templates: tuple = ()  # "{w}" = a word of another language
    # Question templates; "{a}"/"{b}" in position templates are the two sides of one axis.
    color_q: tuple = ()
    shape_q: tuple = ()
    count_q: tuple = ()
    hpos_q: tuple = ()
    vpos_q: tuple = ()

    # Per-language word forms; the defaults serve languages without agreement.
    def color_answer(self, c, s):
        return self.colors[c]

    def shape_slots(self, s):
        return {"s": self.shapes[s]}

    def color_slots(self, c):
        return {"c": self.colors[c]}

    def side_words(self):
        return self.sides

    def slot_words(self) -> set[str]:
        """Every form of the words that questions and captions slot in (colours, shapes, sides, numbers)."""
        forms = [v for k, v in vars(type(self)).items() if k.startswith("colors") and isinstance(v, tuple)]
        return {w for words in (*forms, self.colors, self.shapes, self.sides, self.numbers) for w in words}

    def caption(self, objs, rng):
        raise NotImplementedError

    # Generic question builders.
    def ask_color(self, c, s, rng):
        return pick(rng, self.color_q).format(**self.shape_slots(s)), self.color_answer(c, s)

    def ask_shape(self, c, s, rng):
        return pick(rng, self.shape_q).format(**self.color_slots(c)), self.shapes[s]

    def ask_count(self, n, rng):
        return pick(rng, self.count_q), self.numbers[n - 1]

    def ask_position(self, s, side, rng):
        words = self.side_words()
        first = side - side % 2
        a, b = words[first], words[first + 1]
        if rng.random() < 0.5:
            a, b = b, a
        template = pick(rng, self.hpos_q if side < 2 else self.vpos_q)
        return template.format(a=a, b=b, **self.shape_slots(s)), self.sides[side]

    def with_sides(self, caption, sides):
        """`caption` followed by the answers naming `sides` (a single object's, horizontal first)."""
        if not sides:
            return caption
        space, comma = (" ", ", ") if self.spaced else ("", "、")
        return caption + space + comma.join(self.sides[s] for s in sides)

    def describe(self, rng):
        return pick(rng, self.describe_prompts)

    def translate(self, word, rng):
        return pick(rng, self.translate_templates).format(w=word)


class English(Language):
    code, name = "en", "english"
    colors, shapes = COLORS, SHAPES
    numbers = ("one", "two", "three")
    sides = SIDES
    describe_prompts = ("Describe the image briefly.", "What is in the picture?", "Give a short description of the image.")
    world = (("What color is the sea?", "blue"), ("What color is grass?", "green"),
             ("What color is a ripe banana?", "yellow"), ("What color is a ripe tomato?", "red"),
             ("What color is an orange?", "orange"), ("What color is an eggplant?", "purple"))
    riddles = ("Which shape has three corners?", "Which shape has four equal sides?",
               "Which shape is perfectly round?", "Which shape has five points?")
    translate_templates = ('What is "{w}" in English?', 'Translate "{w}" into English.')
    color_q = ("What color is the {s}?", "What is the color of the {s}?")
    shape_q = ("What shape is the {c} object?", "Which shape is {c}?")
    count_q = ("How many shapes are in the image?", "How many shapes are there?")
    hpos_q = ("Is the {s} {a} or {b}?",)
    vpos_q = ("Is the {s} {a} or {b}?",)

    def side_words(self):
        return ("on the left", "on the right", "at the top", "at the bottom")

    def caption(self, objs, rng):
        items = [("an " if self.colors[c][0] in "aeiou" else "a ") + f"{self.colors[c]} {self.shapes[s]}" for c, s in objs]
        lst = _join(items, ", ", " and ")
        return pick(rng, ("{L}.", "An image of {l}.", "A picture showing {l}.")).format(L=_cap(lst), l=lst)


class Chinese(Language):
    code, name = "zh", "chinese"
    spaced = False
    colors = ("红色", "绿色", "蓝色", "黄色", "紫色", "橙色")
    shapes = ("圆形", "正方形", "三角形", "星形")
    numbers = ("一个", "两个", "三个")
    sides = ("左边", "右边", "上面", "下面")
    describe_prompts = ("请简单描述这张图片。", "图片里有什么？")
    world = (("大海是什么颜色的？", "蓝色"), ("草是什么颜色的？", "绿色"), ("熟透的香蕉是什么颜色的？", "黄色"),
             ("熟透的西红柿是什么颜色的？", "红色"), ("橙子是什么颜色的？", "橙色"), ("茄子是什么颜色的？", "紫色"))
    riddles = ("哪种图形有三个角？", "哪种图形有四条相等的边？", "哪种图形是完全圆的？", "哪种图形有五个尖角？")
    translate_templates = ("“{w}”用中文怎么说？", "把“{w}”翻译成中文。")
    color_q = ("{s}是什么颜色的？", "图中的{s}是什么颜色？")
    shape_q = ("{c}的图形是什么形状？", "哪个图形是{c}的？")
    count_q = ("图中有几个图形？", "图片里一共有几个图形？")
    hpos_q = ("{s}在{a}还是{b}？",)
    vpos_q = ("{s}在{a}还是{b}？",)

    def caption(self, objs, rng):
        lst = _join([f"一个{self.colors[c]}的{self.shapes[s]}" for c, s in objs], "、", "和")
        return pick(rng, ("图中有{l}。", "这张图片里有{l}。")).format(l=lst)


class French(Language):
    code, name = "fr", "french"
    colors = ("rouge", "vert", "bleu", "jaune", "violet", "orange")
    colors_f = ("rouge", "verte", "bleue", "jaune", "violette", "orange")
    shapes = ("cercle", "carré", "triangle", "étoile")
    feminine = (False, False, False, True)
    numbers = ("une", "deux", "trois")  # "forme" is feminine
    sides = ("à gauche", "à droite", "en haut", "en bas")
    describe_prompts = ("Décris brièvement l'image.", "Qu'y a-t-il sur l'image ?")
    world = (("De quelle couleur est la mer ?", "bleue"), ("De quelle couleur est l'herbe ?", "verte"),
             ("De quelle couleur est une banane mûre ?", "jaune"), ("De quelle couleur est une tomate mûre ?", "rouge"),
             ("De quelle couleur est une orange ?", "orange"), ("De quelle couleur est une aubergine ?", "violette"))
    riddles = ("Quelle forme a trois coins ?", "Quelle forme a quatre côtés égaux ?",
               "Quelle forme est parfaitement ronde ?", "Quelle forme a cinq branches ?")
    translate_templates = ("Comment dit-on « {w} » en français ?", "Traduis « {w} » en français.")
    color_q = ("De quelle couleur est {the} ?", "{The} est de quelle couleur ?")
    shape_q = ("Quelle forme est {c} ?", "Quelle figure est {c} ?")  # forme, figure: feminine
    count_q = ("Combien de formes y a-t-il sur l'image ?", "Combien y a-t-il de formes ?")
    hpos_q = ("{The} est-{pron} {a} ou {b} ?",)
    vpos_q = hpos_q

    def color_answer(self, c, s):
        return (self.colors_f if self.feminine[s] else self.colors)[c]

    def shape_slots(self, s):
        noun = self.shapes[s]
        the = "l'" + noun if noun[0] in "aeiouéè" else ("la " if self.feminine[s] else "le ") + noun
        return {"the": the, "The": _cap(the), "pron": "elle" if self.feminine[s] else "il"}

    def color_slots(self, c):
        return {"c": self.colors_f[c]}

    def caption(self, objs, rng):
        items = [("une " if self.feminine[s] else "un ") + f"{self.shapes[s]} {self.color_answer(c, s)}" for c, s in objs]
        lst = _join(items, ", ", " et ")
        return pick(rng, ("{L}.", "Une image avec {l}.", "On voit {l}.")).format(L=_cap(lst), l=lst)


class Spanish(Language):
    code, name = "es", "spanish"
    colors = ("rojo", "verde", "azul", "amarillo", "morado", "naranja")
    colors_f = ("roja", "verde", "azul", "amarilla", "morada", "naranja")
    shapes = ("círculo", "cuadrado", "triángulo", "estrella")
    feminine = (False, False, False, True)
    numbers = ("una", "dos", "tres")  # "figura" is feminine
    sides = ("a la izquierda", "a la derecha", "arriba", "abajo")
    describe_prompts = ("Describe brevemente la imagen.", "¿Qué hay en la imagen?")
    world = (("¿De qué color es el mar?", "azul"), ("¿De qué color es la hierba?", "verde"),
             ("¿De qué color es un plátano maduro?", "amarillo"), ("¿De qué color es un tomate maduro?", "rojo"),
             ("¿De qué color es una naranja?", "naranja"), ("¿De qué color es una berenjena?", "morada"))
    riddles = ("¿Qué figura tiene tres esquinas?", "¿Qué figura tiene cuatro lados iguales?",
               "¿Qué figura es perfectamente redonda?", "¿Qué figura tiene cinco puntas?")
    translate_templates = ("¿Cómo se dice «{w}» en español?", "Traduce «{w}» al español.")
    color_q = ("¿De qué color es {the}?", "¿{The} de qué color es?")
    shape_q = ("¿Qué figura es {c}?", "¿Cuál es la figura {c}?")
    count_q = ("¿Cuántas figuras hay en la imagen?", "¿Cuántas figuras hay?")
    hpos_q = ("¿{The} está {a} o {b}?",)
    vpos_q = hpos_q

    def color_answer(self, c, s):
        return (self.colors_f if self.feminine[s] else self.colors)[c]

    def shape_slots(self, s):
        the = ("la " if self.feminine[s] else "el ") + self.shapes[s]
        return {"the": the, "The": _cap(the)}

    def color_slots(self, c):
        return {"c": self.colors_f[c]}

    def caption(self, objs, rng):
        items = [("una " if self.feminine[s] else "un ") + f"{self.shapes[s]} {self.color_answer(c, s)}" for c, s in objs]
        lst = _join(items, ", ", " y ")
        return pick(rng, ("{L}.", "Una imagen con {l}.", "En la imagen hay {l}.")).format(L=_cap(lst), l=lst)


class Russian(Language):
    code, name = "ru", "russian"
    colors = ("красный", "зелёный", "синий", "жёлтый", "фиолетовый", "оранжевый")
    colors_f = ("красная", "зелёная", "синяя", "жёлтая", "фиолетовая", "оранжевая")
    shapes = ("круг", "квадрат", "треугольник", "звезда")
    feminine = (False, False, False, True)
    numbers = ("одна", "две", "три")  # "фигура" is feminine
    sides = ("слева", "справа", "сверху", "снизу")
    describe_prompts = ("Кратко опиши картинку.", "Что изображено на картинке?")
    world = (("Какого цвета море?", "синее"), ("Какого цвета трава?", "зелёная"),
             ("Какого цвета спелый банан?", "жёлтый"), ("Какого цвета спелый помидор?", "красный"),
             ("Какого цвета апельсин?", "оранжевый"), ("Какого цвета баклажан?", "фиолетовый"))
    riddles = ("У какой фигуры три угла?", "У какой фигуры четыре равные стороны?",
               "Какая фигура совершенно круглая?", "У какой фигуры пять лучей?")
    translate_templates = ("Как по-русски «{w}»?", "Переведи «{w}» на русский.")
    color_q = ("Какого цвета {s}?", "{S} какого цвета?")
    shape_q = ("Какая фигура {c}?", "Какая из фигур {c}?")
    count_q = ("Сколько фигур на картинке?", "Сколько здесь фигур?")
    hpos_q = ("{S} {a} или {b}?", "Где {s}: {a} или {b}?")
    vpos_q = hpos_q

    def color_answer(self, c, s):
        return (self.colors_f if self.feminine[s] else self.colors)[c]

    def shape_slots(self, s):
        return {"s": self.shapes[s], "S": _cap(self.shapes[s])}

    def color_slots(self, c):
        return {"c": self.colors_f[c]}

    def caption(self, objs, rng):
        lst = _join([f"{self.color_answer(c, s)} {self.shapes[s]}" for c, s in objs], ", ", " и ")
        return pick(rng, ("{L}.", "На картинке {l}.", "На изображении {l}.")).format(L=_cap(lst), l=lst)


class Japanese(Language):
    code, name = "ja", "japanese"
    spaced = False
    colors = ("赤", "緑", "青", "黄色", "紫", "オレンジ")
    colors_attr = ("赤い", "緑の", "青い", "黄色い", "紫の", "オレンジの")
    shapes = ("円", "正方形", "三角形", "星")
    numbers = ("一つ", "二つ", "三つ")
    sides = ("左", "右", "上", "下")
    describe_prompts = ("画像を簡単に説明してください。", "画像には何がありますか？")
    world = (("海は何色ですか？", "青"), ("草は何色ですか？", "緑"), ("熟したバナナは何色ですか？", "黄色"),
             ("熟したトマトは何色ですか？", "赤"), ("オレンジは何色ですか？", "オレンジ"), ("なすは何色ですか？", "紫"))
    riddles = ("角が三つある図形は何ですか？", "四つの辺の長さが等しい図形は何ですか？",
               "完全に丸い図形は何ですか？", "とがった先が五つある図形は何ですか？")
    translate_templates = ("「{w}」は日本語で何と言いますか？", "「{w}」を日本語に訳してください。")
    color_q = ("{s}は何色ですか？", "{s}の色は何ですか？")
    shape_q = ("{c}図形は何ですか？", "{c}ものはどんな形ですか？")
    count_q = ("図形はいくつありますか？", "画像には図形がいくつありますか？")
    hpos_q = ("{s}は{a}と{b}のどちらにありますか？",)
    vpos_q = hpos_q

    def color_slots(self, c):
        return {"c": self.colors_attr[c]}

    def caption(self, objs, rng):
        lst = "と".join(f"{self.colors_attr[c]}{self.shapes[s]}" for c, s in objs)
        return pick(rng, ("{l}があります。", "{l}の画像です。")).format(l=lst)


class Arabic(Language):
    code, name = "ar", "arabic"
    colors = ("أحمر", "أخضر", "أزرق", "أصفر", "بنفسجي", "برتقالي")
    colors_f = ("حمراء", "خضراء", "زرقاء", "صفراء", "بنفسجية", "برتقالية")
    shapes = ("دائرة", "مربع", "مثلث", "نجمة")
    feminine = (True, False, False, True)
    numbers = ("واحد", "اثنان", "ثلاثة")  # counting "شكل" (masculine)
    sides = ("على اليسار", "على اليمين", "في الأعلى", "في الأسفل")
    describe_prompts = ("صف الصورة باختصار.", "ماذا يوجد في الصورة؟")
    world = (("ما لون البحر؟", "أزرق"), ("ما لون العشب؟", "أخضر"), ("ما لون الموز الناضج؟", "أصفر"),
             ("ما لون الطماطم الناضجة؟", "أحمر"), ("ما لون البرتقال؟", "برتقالي"), ("ما لون الباذنجان؟", "بنفسجي"))
    riddles = ("ما الشكل الذي له ثلاث زوايا؟", "ما الشكل الذي له أربعة أضلاع متساوية؟",
               "ما الشكل المستدير تمامًا؟", "ما الشكل الذي له خمسة رؤوس؟")
    translate_templates = ("ما معنى «{w}» بالعربية؟", "ترجم «{w}» إلى العربية.")
    color_q = ("ما لون {the}؟", "ما هو لون {the}؟")
    shape_q = ("ما الشكل ال{c}؟", "أي شكل لونه {c}؟")
    count_q = ("كم شكلًا في الصورة؟", "كم عدد الأشكال في الصورة؟")
    hpos_q = ("هل {the} {a} أم {b}؟",)
    vpos_q = hpos_q

    def shape_slots(self, s):
        return {"the": "ال" + self.shapes[s]}

    def caption(self, objs, rng):
        lst = " و".join(f"{self.shapes[s]} {(self.colors_f if self.feminine[s] else self.colors)[c]}" for c, s in objs)
        return pick(rng, ("في الصورة {l}.", "صورة فيها {l}.")).format(l=lst)


class Hindi(Language):
    code, name = "hi", "hindi"
    colors = ("लाल", "हरा", "नीला", "पीला", "बैंगनी", "नारंगी")
    colors_f = ("लाल", "हरी", "नीली", "पीली", "बैंगनी", "नारंगी")
    colors_obl = ("लाल", "हरे", "नीले", "पीले", "बैंगनी", "नारंगी")
    shapes = ("वृत्त", "वर्ग", "त्रिभुज", "तारा")  # all masculine
    shapes_obl = ("वृत्त", "वर्ग", "त्रिभुज", "तारे")
    numbers = ("एक", "दो", "तीन")
    sides = ("बाईं ओर", "दाईं ओर", "ऊपर", "नीचे")
    describe_prompts = ("चित्र का संक्षेप में वर्णन करें।", "चित्र में क्या है?")
    world = (("समुद्र का रंग क्या है?", "नीला"), ("घास का रंग क्या है?", "हरा"), ("पके केले का रंग क्या है?", "पीला"),
             ("पके टमाटर का रंग क्या है?", "लाल"), ("संतरे का रंग क्या है?", "नारंगी"), ("बैंगन का रंग क्या है?", "बैंगनी"))
    riddles = ("किस आकृति के तीन कोने होते हैं?", "किस आकृति की चारों भुजाएँ बराबर होती हैं?",
               "कौन-सी आकृति पूरी तरह गोल होती है?", "किस आकृति के पाँच नुकीले सिरे होते हैं?")
    translate_templates = ('"{w}" को हिंदी में क्या कहते हैं?', '"{w}" का हिंदी में अनुवाद करें।')
    color_q = ("{s} किस रंग का है?", "{s_obl} का रंग क्या है?")
    shape_q = ("कौन-सी आकृति {c_f} है?", "{c_obl} रंग की आकृति कौन-सी है?")
    count_q = ("चित्र में कितनी आकृतियाँ हैं?", "यहाँ कितनी आकृतियाँ हैं?")
    hpos_q = ("{s} {a} है या {b}?",)
    vpos_q = hpos_q

    def shape_slots(self, s):
        return {"s": self.shapes[s], "s_obl": self.shapes_obl[s]}

    def color_slots(self, c):
        return {"c_f": self.colors_f[c], "c_obl": self.colors_obl[c]}

    def caption(self, objs, rng):
        lst = _join([f"एक {self.colors[c]} {self.shapes[s]}" for c, s in objs], ", ", " और ")
        return f"चित्र में {lst} {'है' if len(objs) == 1 else 'हैं'}।"


class Bengali(Language):
    code, name = "bn", "bengali"
    colors = ("লাল", "সবুজ", "নীল", "হলুদ", "বেগুনি", "কমলা")
    shapes = ("বৃত্ত", "বর্গ", "ত্রিভুজ", "তারা")
    numbers = ("একটি", "দুটি", "তিনটি")
    sides = ("বাম দিকে", "ডান দিকে", "উপরে", "নিচে")
    describe_prompts = ("ছবিটি সংক্ষেপে বর্ণনা করো।", "ছবিতে কী আছে?")
    world = (("সমুদ্রের রং কী?", "নীল"), ("ঘাসের রং কী?", "সবুজ"), ("পাকা কলার রং কী?", "হলুদ"),
             ("পাকা টমেটোর রং কী?", "লাল"), ("কমলালেবুর রং কী?", "কমলা"), ("বেগুনের রং কী?", "বেগুনি"))
    riddles = ("কোন আকৃতির তিনটি কোণ আছে?", "কোন আকৃতির চারটি বাহু সমান?",
               "কোন আকৃতি পুরোপুরি গোল?", "কোন আকৃতির পাঁচটি সূচালো মাথা আছে?")
    translate_templates = ('"{w}" বাংলায় কী বলে?', '"{w}" শব্দটি বাংলায় অনুবাদ করো।')
    color_q = ("{the} কোন রঙের?", "{the_gen} রং কী?")
    shape_q = ("কোন আকৃতিটি {c}?", "{c} রঙের আকৃতিটি কী?")
    count_q = ("ছবিতে কয়টি আকৃতি আছে?", "ছবিতে মোট কতগুলো আকৃতি আছে?")
    hpos_q = ("{the} কি {a}, নাকি {b}?",)
    vpos_q = hpos_q

    def shape_slots(self, s):
        return {"the": self.shapes[s] + "টি", "the_gen": self.shapes[s] + "টির"}

    def caption(self, objs, rng):
        lst = _join([f"একটি {self.colors[c]} {self.shapes[s]}" for c, s in objs], ", ", " এবং ")
        return pick(rng, ("ছবিতে {l} আছে।", "এই ছবিতে {l} দেখা যাচ্ছে।")).format(l=lst)


class Urdu(Language):
    code, name = "ur", "urdu"
    colors = ("سرخ", "سبز", "نیلا", "پیلا", "جامنی", "نارنجی")
    colors_f = ("سرخ", "سبز", "نیلی", "پیلی", "جامنی", "نارنجی")
    colors_obl = ("سرخ", "سبز", "نیلے", "پیلے", "جامنی", "نارنجی")
    shapes = ("دائرہ", "مربع", "مثلث", "ستارہ")  # all masculine
    shapes_obl = ("دائرے", "مربع", "مثلث", "ستارے")
    numbers = ("ایک", "دو", "تین")
    sides = ("بائیں طرف", "دائیں طرف", "اوپر", "نیچے")
    describe_prompts = ("تصویر کو مختصراً بیان کریں۔", "تصویر میں کیا ہے؟")
    world = (("سمندر کا رنگ کیا ہے؟", "نیلا"), ("گھاس کا رنگ کیا ہے؟", "سبز"), ("پکے ہوئے کیلے کا رنگ کیا ہے؟", "پیلا"),
             ("پکے ہوئے ٹماٹر کا رنگ کیا ہے؟", "سرخ"), ("سنگترے کا رنگ کیا ہے؟", "نارنجی"), ("بینگن کا رنگ کیا ہے؟", "جامنی"))
    riddles = ("کس شکل کے تین کونے ہوتے ہیں؟", "کس شکل کے چاروں اضلاع برابر ہوتے ہیں؟",
               "کون سی شکل بالکل گول ہوتی ہے؟", "کس شکل کے پانچ نوکیلے سرے ہوتے ہیں؟")
    translate_templates = ('"{w}" کو اردو میں کیا کہتے ہیں؟', '"{w}" کا اردو میں ترجمہ کریں۔')
    color_q = ("{s} کس رنگ کا ہے؟", "{s_obl} کا رنگ کیا ہے؟")
    shape_q = ("کون سی شکل {c_f} ہے؟", "{c_obl} رنگ کی شکل کون سی ہے؟")
    count_q = ("تصویر میں کتنی شکلیں ہیں؟", "یہاں کتنی شکلیں ہیں؟")
    hpos_q = ("{s} {a} ہے یا {b}؟",)
    vpos_q = hpos_q

    def shape_slots(self, s):
        return {"s": self.shapes[s], "s_obl": self.shapes_obl[s]}

    def color_slots(self, c):
        return {"c_f": self.colors_f[c], "c_obl": self.colors_obl[c]}

    def caption(self, objs, rng):
        lst = _join([f"ایک {self.colors[c]} {self.shapes[s]}" for c, s in objs], "، ", " اور ")
        return f"تصویر میں {lst} {'ہے' if len(objs) == 1 else 'ہیں'}۔"


# PALO's order of the 10 languages.
LANGUAGES = {lang.code: lang for lang in (English(), Chinese(), French(), Spanish(), Russian(), Japanese(),
                                          Arabic(), Hindi(), Bengali(), Urdu())}


def tokenizer_split_words() -> list[str]:
    """The slot words of the languages written without spaces, which no tokenizer piece may span.
    The generated text repeats each question template verbatim thousands of times, so BPE would
    learn a whole Chinese or Japanese question as one piece ("紫色的图形是什么形状"), swallowing the
    colour it names into a token seen only in that question; a tokenizer trained on real text keeps
    such words apart (spaced languages get that from their spaces)."""
    return sorted({w for lang in LANGUAGES.values() if not lang.spaced for w in lang.slot_words()})
