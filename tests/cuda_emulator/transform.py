# .cu / .cuh to emulator C++: kernel launches become emu::launch calls; extern shared arrays become pointers;
# static shared arrays are registered with the emulator, which poisons them per block.
import re, sys
def transform(text):
    text = re.sub(r'extern __shared__ __align__\(16\) float (\w+)\[\];', r'float* \1 = emu::dynamic_shared_float();', text)
    # A static shared array is poisoned (NaN bytes) at the start of each block, as memory nobody wrote.
    text = re.sub(r'__shared__ ([\w:]+) (\w+)((?:\[[^\]]+\])+);',
                  r'static \1 \2\3; emu::shared_array(\2, sizeof(\2));', text)
    out = []
    i = 0
    while True:
        j = text.find('<<<', i)
        if j < 0:
            out.append(text[i:]); break
        # kernel expression: back to the start of the statement (after ';', '{', '}' or newline-indent)
        k = j
        while k > 0 and text[k-1] not in ';{}\n':
            k -= 1
        stmt_start = k
        while text[stmt_start] in ' \t': stmt_start += 1
        kernel = text[stmt_start:j].strip()
        e = text.find('>>>', j)
        config = text[j+3:e]
        # balanced argument list
        p = e + 3
        assert text[p] == '(', text[p:p+20]
        depth = 0; q = p
        while True:
            if text[q] == '(': depth += 1
            elif text[q] == ')':
                depth -= 1
                if depth == 0: break
            q += 1
        args = text[p+1:q]
        cfg = [c.strip() for c in split_top(config)]
        out.append(text[i:stmt_start])
        # The arguments are evaluated here, into the lambda's init-capture, as a launch copies them; so a
        # structured binding among them is not captured (C++17 forbids that).
        out.append('emu::launch("%s", dim3(%s), dim3(%s), %s, [&, emu_arguments = std::make_tuple(%s)]() { '
                   'std::apply([&](auto... emu_argument) { %s(emu_argument...); }, emu_arguments); })'
                   % (kernel.replace('"', '\\"'), cfg[0], cfg[1], cfg[2], args, kernel))
        i = q + 1
    return ''.join(out)
def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch in '(<[': depth += 1
        if ch in ')>]': depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
        else:
            cur += ch
    parts.append(cur)
    return parts
src, dst = sys.argv[1], sys.argv[2]
open(dst, 'w').write(transform(open(src).read()))
