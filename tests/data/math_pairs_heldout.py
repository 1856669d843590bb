"""Held-out labelled answer pairs for the math answer verifier.

These pairs were written independently of the verifier's rules, as a held-out
check that the rules generalise to the answer families below.  Golds are taken
from (or modelled on) the benchmarks' own formats: GSM8K final numbers, MATH-500
LaTeX answers, AIME strings, AMC float strings, Minerva solution-boxed answers
and OlympiadBench ``final_answer`` lists rendered as strings.

Each row of ``HELDOUT`` has one of two shapes:

    (family, gold, prediction, equivalent)
        the prediction is scored as the final ``\\boxed{prediction}`` of a
        completion;
    (family, gold, completion, equivalent, "completion")
        the completion text is scored as it is.

``gold`` is normally a string.  Where a Minerva gold is rounded to a number of
significant figures and a prediction should be accepted when it rounds to the
gold at that precision, the gold is a dict
``{"answer": ..., "gold_precision": "significant"}`` passed through as the
problem; plain string golds compare exactly.

``equivalent`` is True when a careful human grader would accept the prediction
as the gold answer and False when not (the False rows are realistic near
misses).

``BAD_GOLDS`` lists gold strings that cannot be read and must be rejected as
data errors; ``GOOD_GOLDS`` lists tricky golds that are readable.

Families: sci_notation, exact_integer, repeating_decimal, multi_solution,
retraction, choice, empty_infinity, mixed_percent, latex_sizing, text_unit,
text_answer, complex, bad_gold (the two lists), base, misc.
"""


def _sig(answer):
    return {"answer": answer, "gold_precision": "significant"}


HELDOUT = [
    # ------------------------------------------------------------------
    # 1. sci_notation
    # ------------------------------------------------------------------
    ("sci_notation", "4.5e33", "4.5\\times10^{33}", True),
    ("sci_notation", "4.5e33", "4.5 \\cdot 10^{33}", True),
    ("sci_notation", "4.5e33", "4.5\\times10^{32}", False),
    ("sci_notation", "4.5e33", "4.52\\times10^{33}", False),
    ("sci_notation", "1e-5", "10^{-5}", True),
    ("sci_notation", "1e-5", "0.00001", True),
    ("sci_notation", "1e-5", "10^{-4}", False),
    ("sci_notation", "7.5e7", "75000000", True),
    ("sci_notation", "7.5e7", "7.5 \\times 10^{8}", False),
    ("sci_notation", "3e8", "3 \\times 10^8", True),
    ("sci_notation", "1.4903e4", "14903", True),
    ("sci_notation", _sig("4.5e33"), "4.52\\times10^{33}", True),
    ("sci_notation", _sig("4.5e33"), "4.46 \\times 10^{33}", True),
    ("sci_notation", _sig("4.5e33"), "4.7\\times10^{33}", False),
    ("sci_notation", _sig("4.5e33"), "4.5\\times10^{32}", False),
    ("sci_notation", _sig("7.5e7"), "7.54\\times10^{7}", True),
    ("sci_notation", _sig("7.5e7"), "7.6\\times10^{7}", False),
    ("sci_notation", _sig("3.83e35"), "3.834 \\times 10^{35}", True),
    ("sci_notation", _sig("3.83e35"), "3.85\\times10^{35}", False),
    ("sci_notation", _sig("1.77e-6"), "1.768\\times10^{-6}", True),
    ("sci_notation", _sig("1.77e-6"), "1.79\\times 10^{-6}", False),
    # ------------------------------------------------------------------
    # 2. exact_integer
    # ------------------------------------------------------------------
    ("exact_integer", "1000000007", "1000000007", True),
    ("exact_integer", "1000000007", "1000000008", False),
    ("exact_integer", "1000000007", "10^9+7", True),
    ("exact_integer", "123456789012345678901234567890", "123456789012345678901234567891", False),
    ("exact_integer", "123456789012345678901234567890", "123,456,789,012,345,678,901,234,567,890", True),
    ("exact_integer", "1267650600228229401496703205376", "1.2676506002282294e30", False),
    ("exact_integer", "1267650600228229401496703205376", "2^{100}", True),
    ("exact_integer", "1267650600228229401496703205376", "1267650600228229401496703205377", False),
    ("exact_integer", "1267650600228229401496703205376", "1,267,650,600,228,229,401,496,703,205,376", True),
    ("exact_integer", "9007199254740993", "9007199254740992", False),
    ("exact_integer", "9007199254740993", "9007199254740993.0", True),
    ("exact_integer", "100000000000000000000", "10^{20}", True),
    ("exact_integer", "100000000000000000000", "10^{20}+1", False),
    ("exact_integer", "11,\\! 111,\\! 111,\\! 100", "11111111100", True),
    ("exact_integer", "11,\\! 111,\\! 111,\\! 100", "11111111110", False),
    ("exact_integer", "10,\\!080", "10080", True),
    ("exact_integer", "114,200", "114200", True),
    ("exact_integer", "114,200", "114201", False),
    # ------------------------------------------------------------------
    # 3. repeating_decimal
    # ------------------------------------------------------------------
    ("repeating_decimal", "\\frac{4}{33}", "0.\\overline{12}", True),
    ("repeating_decimal", "\\frac{4}{33}", "0.12", False),
    ("repeating_decimal", "\\frac{4}{33}", "0.\\overline{21}", False),
    ("repeating_decimal", "\\frac{1}{3}", "0.\\dot{3}", True),
    ("repeating_decimal", "\\frac{1}{3}", "0.3", False),
    ("repeating_decimal", "\\frac{7}{9}", "0.777\\ldots", True),
    ("repeating_decimal", "\\frac{7}{9}", "0.777", False),
    ("repeating_decimal", "2", "2.\\overline{3}", False),
    ("repeating_decimal", "\\frac{7}{3}", "2.\\overline{3}", True),
    ("repeating_decimal", "\\frac{1}{7}", "0.\\overline{142857}", True),
    ("repeating_decimal", "\\frac{1}{7}", "0.\\overline{142856}", False),
    ("repeating_decimal", "\\frac{1}{6}", "0.1\\overline{6}", True),
    ("repeating_decimal", "\\frac{1}{6}", "0.\\overline{16}", False),
    ("repeating_decimal", "0.\\overline{36}", "\\frac{4}{11}", True),
    ("repeating_decimal", "\\frac{5}{11}", "0.4545\\ldots", True),
    ("repeating_decimal", "1", "0.\\overline{9}", True),
    # ------------------------------------------------------------------
    # 4. multi_solution
    # ------------------------------------------------------------------
    ("multi_solution", "1,-2", "n = -2 \\text{ or } n = 1", True),
    ("multi_solution", "1,-2", "x=1, x=-2", True),
    ("multi_solution", "1,-2", "-2, 1", True),
    ("multi_solution", "1,-2", "1", False),
    ("multi_solution", "1,-2", "1, -2, 3", False),
    ("multi_solution", "1,-2", "1, 2", False),
    ("multi_solution", "['$5,-2$']", "-2, 5", True),
    ("multi_solution", "['$5,-2$']", "x=5 \\text{ and } x=-2", True),
    ("multi_solution", "['$5,-2$']", "5", False),
    ("multi_solution", "['$-1$,$2$,$-2$']", "-2, -1, 2", True),
    ("multi_solution", "['$-1$,$2$,$-2$']", "-1, 2", False),
    ("multi_solution", "['1,3,5']", "\\{1, 3, 5\\}", True),
    ("multi_solution", "['1,3,5']", "1, 3, 5, 7", False),
    ("multi_solution", "3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}, 3-2\\sqrt{2}", True),
    ("multi_solution", "3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}", False),
    ("multi_solution", "3", "3 \\text{ or } 4", False),
    ("multi_solution", "['2']", "2 \\text{ or } 3", False),
    # ------------------------------------------------------------------
    # 5. retraction (completion rows)
    # ------------------------------------------------------------------
    (
        "retraction",
        "14",
        "Counting the pairs in each row gives $\\boxed{12}$.\n\n"
        "Wait, I double-counted the pairs with both ends red; the total is 14.",
        True,
        "completion",
    ),
    (
        "retraction",
        "12",
        "Counting the pairs in each row gives $\\boxed{12}$.\n\n"
        "Wait, I double-counted the pairs with both ends red; the total is 14.",
        False,
        "completion",
    ),
    (
        "retraction",
        "14",
        "So the total is $\\boxed{12}$. Wait, I double-counted; the total is $\\boxed{14}$.",
        True,
        "completion",
    ),
    (
        "retraction",
        "12",
        "So the total is $\\boxed{12}$. Wait, I double-counted; the total is $\\boxed{14}$.",
        False,
        "completion",
    ),
    (
        "retraction",
        "42",
        "So the number of arrangements is 42.\n<answer>42</answer>\n\nIn summary, the result is $\\boxed{43}$.",
        False,
        "completion",
    ),
    (
        "retraction",
        "43",
        "So the number of arrangements is 42.\n<answer>42</answer>\n\nIn summary, the result is $\\boxed{43}$.",
        False,
        "completion",
    ),
    (
        "retraction",
        "12",
        "Multiplying, $3 \\cdot 4 = 12$, so the answer is $\\boxed{12}$.\n\nCheck: 12 works, since $12 / 3 = 4$.",
        True,
        "completion",
    ),
    (
        "retraction",
        "12",
        "The answer is $\\boxed{12}$. Let me verify: substituting back gives $12 = 12$, so the answer is 12.",
        True,
        "completion",
    ),
    ("retraction", "7", "Therefore $x = \\boxed{7}$.\n\nI hope this helps!", True, "completion"),
    (
        "retraction",
        "7",
        "Therefore $x = \\boxed{7}$. This is the only positive solution, since the other root, $-3$, is negative.",
        True,
        "completion",
    ),
    (
        "retraction",
        "8",
        "There are $\\boxed{7}$ subsets. Hmm, that is wrong: I forgot the empty set, so the answer is 8.",
        True,
        "completion",
    ),
    (
        "retraction",
        "7",
        "There are $\\boxed{7}$ subsets. Hmm, that is wrong: I forgot the empty set, so the answer is 8.",
        False,
        "completion",
    ),
    (
        "retraction",
        "25",
        "The area is $\\boxed{25}$. Actually no, the side is 6, so the area is $\\boxed{36}$.",
        False,
        "completion",
    ),
    (
        "retraction",
        "36",
        "The area is $\\boxed{25}$. Actually no, the side is 6, so the area is $\\boxed{36}$.",
        True,
        "completion",
    ),
    (
        "retraction",
        "5",
        "The smallest such prime is $\\boxed{5}$. Note that 5 is prime, and the next candidate, 7, fails the condition.",
        True,
        "completion",
    ),
    (
        "retraction",
        "3",
        "The answer is $\\boxed{3}$. Double-checking with $n = 4$ gives 10, which is too big, so 3 is correct.",
        True,
        "completion",
    ),
    # ------------------------------------------------------------------
    # 6. choice
    # ------------------------------------------------------------------
    ("choice", "C", "(C) \\text{ and } (D)", False),
    ("choice", "C", "C \\text{ or } D", False),
    ("choice", "C", "D", False),
    ("choice", "C", "C.", True),
    ("choice", "B", "Option B", True),
    ("choice", "C", "\\textbf{(C) }27", True),
    ("choice", "B", "Answer: (B)", True),
    ("choice", "\\text{(C)}", "C", True),
    ("choice", "\\text{(C)}", "\\text{(B)}", False),
    ("choice", "\\text{(E)}", "(E)", True),
    ("choice", "A, C", "C, A", True),
    ("choice", "A, C", "A", False),
    ("choice", "A, C", "A, C, D", False),
    ("choice", "27.0", "\\textbf{(C) }27", True),
    ("choice", "27.0", "\\textbf{(C) }28", False),
    ("choice", "36.0", "\\textbf{(D)}\\ 36", True),
    # ------------------------------------------------------------------
    # 7. empty_infinity
    # ------------------------------------------------------------------
    ("empty_infinity", "\\emptyset", "\\varnothing", True),
    ("empty_infinity", "\\emptyset", "\\{\\}", True),
    ("empty_infinity", "\\emptyset", "\\text{no solution}", True),
    ("empty_infinity", "\\emptyset", "\\text{no solutions}", True),
    ("empty_infinity", "\\emptyset", "\\text{none}", True),
    ("empty_infinity", "\\varnothing", "\\emptyset", True),
    ("empty_infinity", "\\emptyset", "\\{0\\}", False),
    ("empty_infinity", "\\emptyset", "0", False),
    ("empty_infinity", "\\infty", "\\text{infinity}", True),
    ("empty_infinity", "\\infty", "+\\infty", True),
    ("empty_infinity", "+\\infty", "\\infty", True),
    ("empty_infinity", "\\infty", "-\\infty", False),
    ("empty_infinity", "-\\infty", "\\infty", False),
    ("empty_infinity", "\\infty", "0", False),
    ("empty_infinity", "(5,\\infty)", "(5, +\\infty)", True),
    ("empty_infinity", "(5,\\infty)", "[5,\\infty)", False),
    # ------------------------------------------------------------------
    # 8. mixed_percent
    # ------------------------------------------------------------------
    ("mixed_percent", "\\frac{100}{3}\\%", "33\\frac{1}{3}\\%", True),
    ("mixed_percent", "33\\frac{1}{3}\\%", "33\\%", False),
    ("mixed_percent", "33\\frac{1}{3}\\%", "33.\\overline{3}\\%", True),
    ("mixed_percent", "33\\frac{1}{3}\\%", "33.3\\%", False),
    ("mixed_percent", "12.5\\%", "12\\frac{1}{2}\\%", True),
    ("mixed_percent", "12.5\\%", "12\\%", False),
    ("mixed_percent", "16\\frac{2}{3}\\%", "\\frac{50}{3}\\%", True),
    ("mixed_percent", "16\\frac{2}{3}\\%", "\\frac{32}{3}\\%", False),
    ("mixed_percent", "2\\frac{1}{2}", "\\frac{5}{2}", True),
    ("mixed_percent", "2\\frac{1}{2}", "2.5", True),
    ("mixed_percent", "2\\frac{1}{2}", "1", False),
    ("mixed_percent", "\\frac{5}{2}", "2\\frac{1}{2}", True),
    ("mixed_percent", "1\\frac{3}{4}", "1.75", True),
    ("mixed_percent", "1\\frac{3}{4}", "\\frac{3}{4}", False),
    ("mixed_percent", "-1\\frac{1}{2}", "-\\frac{3}{2}", True),
    ("mixed_percent", "-1\\frac{1}{2}", "-\\frac{1}{2}", False),
    ("mixed_percent", "10", "10\\%", True),
    # ------------------------------------------------------------------
    # 9. latex_sizing
    # ------------------------------------------------------------------
    ("latex_sizing", "(8,-2)", "\\big( 8,-2 \\big)", True),
    ("latex_sizing", "(8,-2)", "\\Big(8,-2\\Big)", True),
    ("latex_sizing", "(8,-2)", "\\bigl( 8, -2 \\bigr)", True),
    ("latex_sizing", "(8,-2)", "\\left( 8, -2 \\right)", True),
    ("latex_sizing", "(8,-2)", "\\big(-2,8\\big)", False),
    ("latex_sizing", "-2", "\\big(8,-2\\big)", False),
    ("latex_sizing", "x \\in [-2,7]", "\\Big[-2, 7\\Big]", True),
    ("latex_sizing", "x \\in [-2,7]", "\\Big(-2, 7\\Big)", False),
    ("latex_sizing", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\biggl( 3, \\frac{\\pi}{2} \\biggr)", True),
    ("latex_sizing", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\Bigl( 3, \\pi \\Bigr)", False),
    ("latex_sizing", "5", "5.", True),
    ("latex_sizing", "5", "5.5", False),
    ("latex_sizing", "5", "The answer is <answer>\\[ 5 \\]</answer>", True, "completion"),
    ("latex_sizing", "5", "The answer is <answer>\\[ 6 \\]</answer>", False, "completion"),
    ("latex_sizing", "\\frac{1}{2}", "Half of the tiles are red.\n<answer>\\( \\frac{1}{2} \\)</answer>", True, "completion"),
    ("latex_sizing", "\\frac{1}{2}", "Half of the tiles are red.\n<answer>\\( \\frac{1}{3} \\)</answer>", False, "completion"),
    # ------------------------------------------------------------------
    # 10. text_unit
    # ------------------------------------------------------------------
    ("text_unit", "150", "\\text{150 cm}", True),
    ("text_unit", "150", "\\text{151 cm}", False),
    ("text_unit", "48", "\\textbf{48 apples}", True),
    ("text_unit", "48", "\\textbf{84 apples}", False),
    ("text_unit", "18", "\\text{\\$18}", True),
    ("text_unit", "5.4 \\text{ cents}", "\\text{5.4 cents}", True),
    ("text_unit", "5.4 \\text{ cents}", "5.4", True),
    ("text_unit", "5.4 \\text{ cents}", "\\text{54 cents}", False),
    ("text_unit", "864 \\mbox{ inches}^2", "\\text{864 square inches}", True),
    ("text_unit", "864 \\mbox{ inches}^2", "\\text{846 square inches}", False),
    ("text_unit", "20", "\\text{20 minutes}", True),
    ("text_unit", "20", "\\text{2 hours}", False),
    ("text_unit", "3", "\\textbf{3 dogs}", True),
    ("text_unit", "3", "\\textbf{13 dogs}", False),
    ("text_unit", "70000", "\\text{\\$70,000}", True),
    ("text_unit", "70000", "\\text{\\$7,000}", False),
    # ------------------------------------------------------------------
    # 11. text_answer
    # ------------------------------------------------------------------
    ("text_answer", "\\text{ellipse}", "\\text{an ellipse}", True),
    ("text_answer", "\\text{ellipse}", "\\text{Ellipse}", True),
    ("text_answer", "\\text{ellipse}", "\\text{hyperbola}", False),
    ("text_answer", "\\text{ellipse}", "\\text{circle}", False),
    ("text_answer", "\\text{parabola}", "\\text{a parabola}", True),
    ("text_answer", "\\text{parabola}", "\\text{hyperbola}", False),
    ("text_answer", "\\text{odd}", "\\text{odd function}", True),
    ("text_answer", "\\text{odd}", "\\text{even}", False),
    ("text_answer", "\\text{even}", "\\text{odd}", False),
    ("text_answer", "\\text{even}", "\\text{the function is even}", True),
    ("text_answer", "\\text{even}", "\\text{neither even nor odd}", False),
    ("text_answer", "\\text{even}", "\\text{not even}", False),
    ("text_answer", "\\text{neither}", "\\text{neither even nor odd}", True),
    ("text_answer", "\\text{neither}", "\\text{odd}", False),
    ("text_answer", "\\text{east}", "\\text{East}", True),
    ("text_answer", "\\text{east}", "\\text{northeast}", False),
    # ------------------------------------------------------------------
    # 12. complex
    # ------------------------------------------------------------------
    ("complex", "3+4i", "4i+3", True),
    ("complex", "3+4i", "3-4i", False),
    ("complex", "3+4i", "4+3i", False),
    ("complex", "\\frac{1}{2}+\\frac{\\sqrt{3}}{2}i", "\\frac{1+i\\sqrt{3}}{2}", True),
    ("complex", "\\frac{1}{2}+\\frac{\\sqrt{3}}{2}i", "\\frac{1-i\\sqrt{3}}{2}", False),
    ("complex", "2-i", "z = 2 - i", True),
    ("complex", "2-i", "z = 2 + i", False),
    ("complex", "6 - 5i", "-5i+6", True),
    ("complex", "6 - 5i", "6+5i", False),
    ("complex", "1+274i", "1 + 274 i", True),
    ("complex", "1+274i", "274+i", False),
    ("complex", "-2+2 \\sqrt{3} i", "-2+2i\\sqrt{3}", True),
    ("complex", "-2+2 \\sqrt{3} i", "-2-2\\sqrt{3} i", False),
    ("complex", "-8-8 \\sqrt{3} i", "-8-8i\\sqrt{3}", True),
    ("complex", "\\ln 2 + i\\pi / 3", "\\ln 2 + \\frac{\\pi}{3} i", True),
    ("complex", "\\ln 2 + i\\pi / 3", "\\ln 2 - \\frac{i\\pi}{3}", False),
    # ------------------------------------------------------------------
    # 14. base
    # ------------------------------------------------------------------
    ("base", "2516_8", "2516_8", True),
    ("base", "2516_8", "2516_{8}", True),
    ("base", "2516_8", "2516_{10}", False),
    ("base", "2516_8", "2561_8", False),
    ("base", "2516_8", "2516_{9}", False),
    ("base", "2516_8", "1358", False),
    ("base", "1010_2", "1010_{2}", True),
    ("base", "1010_2", "10", False),
    ("base", "1010_2", "1011_2", False),
    ("base", "1010_2", "1010_{10}", False),
    ("base", "4210_{5}", "4210_5", True),
    ("base", "4210_{5}", "4210_{6}", False),
    ("base", "52_8", "52_{8}", True),
    ("base", "52_8", "42", False),
    ("base", "52_8", "25_8", False),
    ("base", "204_5", "204_{5}", True),
    ("base", "4343_6", "4343_{6}", True),
    ("base", "4343_6", "4343_{8}", False),
    # ------------------------------------------------------------------
    # 15. misc
    # ------------------------------------------------------------------
    ("misc", "1 \\pm \\sqrt{19}", "\\pm\\sqrt{19}+1", True),
    ("misc", "1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", True),
    ("misc", "1 \\pm \\sqrt{19}", "1+\\sqrt{19}", False),
    ("misc", "1 \\pm \\sqrt{19}", "-1 \\pm \\sqrt{19}", False),
    ("misc", "(\\pm 3, \\pm 2)", "(3,2),(-3,2),(3,-2),(-3,-2)", True),
    ("misc", "['$(3,2),(-3,2),(3,-2),(-3,-2)$']", "(\\pm 3, \\pm 2)", True),
    ("misc", "['$(3,2),(-3,2),(3,-2),(-3,-2)$']", "(3,2),(-3,-2)", False),
    ("misc", "['$(3,2),(-3,2),(3,-2),(-3,-2)$']", "(\\pm 2, \\pm 3)", False),
    ("misc", "(-3, 5)", "y=5, x=-3", True),
    ("misc", "(-3, 5)", "x=5, y=-3", False),
    ("misc", "(-3, 5)", "(5, -3)", False),
    ("misc", "2500, 7500", "2,500 \\text{ and } 7,500", True),
    ("misc", "['2500,7500']", "2,500 \\text{ and } 7,500", True),
    ("misc", "2500, 7500", "2,500", False),
    ("misc", "2500, 7500", "2,500 \\text{ and } 7,000", False),
    ("misc", "\\frac{e^x-e^{-x}}{2}", "\\sinh x", True),
    ("misc", "\\frac{e^x-e^{-x}}{2}", "\\cosh x", False),
    ("misc", "\\frac{1}{2}(\\exp{a*t} + \\exp{-a*t})", "\\cosh(at)", True),
    ("misc", "\\frac{1}{2}(\\exp{a*t} + \\exp{-a*t})", "\\sinh(at)", False),
]


# ----------------------------------------------------------------------
# 13. bad_gold: gold strings that cannot be read (data errors) ...
# ----------------------------------------------------------------------
BAD_GOLDS = [
    "\\frac{1}{",
    "\\frac{1}{2",
    "\\sqrt{",
    "\\sqrt",
    "x=",
    "=",
    "",
    "   ",
    "3+",
    "2^",
    "(1,2",
    "{",
    "}",
    "\\left(",
]

# ... and tricky golds that are readable.
GOOD_GOLDS = [
    "m_{\\max }=n^2-n-1",
    "['$m_{\\max }=n^{2}-n-1$']",
    "X_{d}=125-1.25 P",
    "E_{1},E_{2}",
    "(-\\infty, 0]",
    "(3,4]",
    "(-\\infty, 2) \\cup (3, \\infty)",
    "\\left(\\frac{3}{5},\\frac{8}{3}\\right]",
    "x \\in [-2,7]",
    "['$(-\\infty, 0) \\cup\\{1\\}$.']",
    "['$[\\frac{1}{2}, 8]$']",
    "4.5e33",
    "2.7778e-6",
    "1e-5",
    "7.5e7",
    "\\{1\\pm\\sqrt{5},-2\\}",
    "['$\\left\\lfloor\\log _{2} n\\right\\rfloor+1$']",
    "2516_8",
    "4210_{5}",
    "10,\\!080",
    "\\frac{270}7\\text{ degrees}",
]
