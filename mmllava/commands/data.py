"""Prepare data files: `repeat` a small LLaVA data set N times, or convert FoodieQA (`foodieqa`) to
LLaVA format. JSON or JSONL in and out, chosen by the file extension (.jsonl = one sample a line)."""
# Libraries are imported inside the functions below: `mmllava --help` imports every command module.


def add_arguments(parser):
    tools = parser.add_subparsers(dest='tool', metavar='TOOL', required=True, parser_class=type(parser))
    repeat = tools.add_parser('repeat', help='write the sample list repeated N times',
                              description='Write the samples of IN repeated N times (in order) to OUT.')
    repeat.add_argument('-i', '--input', required=True, metavar='IN', help='LLaVA-format .json or .jsonl')
    repeat.add_argument('-o', '--output', required=True, metavar='OUT', help='.json or .jsonl to write')
    repeat.add_argument('-n', '--times', type=int, required=True, metavar='N', help='how many copies (>= 1)')
    food = tools.add_parser('foodieqa', help='convert FoodieQA sivqa_tidy.json to LLaVA format',
                            description='Convert FoodieQA single-image questions to LLaVA format, as the InternVL2-2B '
                                        "food fine-tune's process_food.py does. FoodieQA is for evaluation only "
                                        '(CC BY-NC-ND 4.0).')
    food.add_argument('-i', '--input', required=True, metavar='IN', help='sivqa_tidy.json')
    food.add_argument('-o', '--output', required=True, metavar='OUT', help='.json or .jsonl to write')
    food.add_argument('--image-root', metavar='DIR', help='check that every food_file exists under DIR '
                                                          '(the folder to use as image_folder)')
    food.add_argument('--eval', action='store_true', help='keep choices and answer, for `mmllava eval`')


def run(args):
    if args.tool == 'repeat':
        from mmllava.datatools.repeat import repeat_file

        count = repeat_file(args.input, args.output, args.times)
    else:
        from mmllava.datatools.foodieqa import convert_file

        count = convert_file(args.input, args.output, image_root=args.image_root, eval_form=args.eval)
    print(f'wrote {count} samples to {args.output}')
    return 0
